"""What `reverie make`, `edit`, `batch`, `chat` and `expand` call when a `reverie serve` already runs
for their home: the same work on the warm engine, its progress as events, and the answers in the
shapes the commands print in-process.

The client sends its options as it would pass them to Studio (make's to `Studio.request`, edit's
to `edit_request`, chat's to `Studio.chat`); they are checked against those signatures, so a new
option travels without an edit here, and a client newer than its server is told to restart the
server rather than lose an option. Nothing a request holds is ever used as a path: an edit's
source and mask come as bytes, a batch file as its text.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import inspect
import json
import queue
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from reverie.serve.http import MAX_BODY, RowId, openai_error, read_json
from reverie.serve.service import Busy
from reverie.types import ReverieError

router = APIRouter()

MAX_IMAGE = 32 * 1024 * 1024  # bytes of an edit's source or mask, as /v1/images/edits takes them
MAX_EDIT_BODY = 2 * (MAX_IMAGE * 4 // 3 + 4) + 64 * 1024  # both files in base64, and the options
MAX_BATCH_TEXT = 4 * 1024 * 1024  # a batch file's text: thousands of ideas, far from a flood
STOP_WAIT = 90.0  # a batch stopped by its client ends within the runner's own join time (60 s)


async def cli_body(request: Request, limit: int = MAX_BODY) -> tuple[dict, Optional[JSONResponse]]:
    """A CLI request's JSON body, and its refusal when the client came from another home: two homes
    never share a server (a client that found this one through another home's file is refused)."""
    data = await read_json(request, limit=limit)
    home = data.get("home")
    if home is not None and Path(str(home)).resolve() != Path(request.app.state.service.studio.home).resolve():
        return data, openai_error(409, "this server serves another home: run with --local, or start `reverie serve` "
                                       "for this home", code="other_home")
    return data, None


def known_options(fn: Callable, options: Any, *, taken: tuple[str, ...] = ()) -> dict[str, Any]:
    """The client's options as keyword arguments of fn; one it does not take is one line (an older server)."""
    if not isinstance(options, dict):
        raise ReverieError("options must be a JSON object of the command's options")
    params = inspect.signature(fn).parameters
    unknown = sorted(k for k in options if k not in params or k in taken)
    if unknown:
        raise ReverieError(f"this server does not know {', '.join(unknown)}: restart it (`reverie serve --stop`, then "
                           "`reverie serve --detach`) so it runs the same reverie as this command, or run with --local")
    return dict(options)


def request_payload(req, origin: str = "cli", **extra: Any) -> dict[str, Any]:
    """A served request's payload holding the whole Request (ServeService runs it as written)."""
    return {"prompt": req.idea, "n": req.n, "rounds": req.rounds, "target": req.target, "aspect": req.aspect,
            "megapixels": req.megapixels, "profile": req.profile, "seed": req.seed, "origin": origin,
            "request": req.to_dict(), **extra}


def accepted(service, payload: dict):
    try:
        job = service.submit("images", payload, keep=False)
    except Busy as e:
        return openai_error(429, str(e), kind="rate_limit_error")
    return {"request_id": job.id, "events": f"/events/{job.id}", "notices": payload.get("notices", [])}


# -- make and edit -------------------------------------------------------------------------
@router.post("/api/cli/make")
async def make(request: Request):
    service = request.app.state.service
    data, refused = await cli_body(request)
    if refused is not None:
        return refused
    studio = service.studio
    options = data.get("options")
    if options is None:  # a client of the first warm-server release: make's fields at the top level
        options = {k: data[k] for k in ("n", "rounds", "target", "aspect", "megapixels", "seed", "profile") if k in data}
    try:
        kwargs = known_options(studio.request, options, taken=("idea", "references"))
        req = studio.request(str(data.get("idea") or ""), **kwargs)
    except (ReverieError, TypeError, ValueError) as e:
        return openai_error(400, str(e))
    return accepted(service, request_payload(req))


@router.post("/api/cli/edit")
async def edit(request: Request):
    """An edit: the source (and mask) as bytes, written by this process under the home and kept
    there content-addressed; an image the home already holds is used in place, as in-process."""
    from reverie.orchestrator.edit import edit_request

    service = request.app.state.service
    data, refused = await cli_body(request, limit=MAX_EDIT_BODY)
    if refused is not None:
        return refused
    studio = service.studio
    notices: list[str] = []
    written: list[Path] = []
    shown: dict[str, str] = {}

    def place(field: str) -> Optional[str]:
        item = data.get(field)
        if item is None:
            return None
        if not isinstance(item, dict) or not isinstance(item.get("b64"), str):
            raise ReverieError(f"{field} is {{\"b64\": BASE64, \"name\": NAME}}")
        try:
            raw = base64.b64decode(item["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise ReverieError(f"{field}: the bytes are not valid base64") from None
        if len(raw) > MAX_IMAGE:
            raise ReverieError(f"the {field} is over {MAX_IMAGE // 2**20} MB: give a smaller image")
        row = service.queue.render_by_sha(hashlib.sha256(raw).hexdigest())
        if field == "source" and row and row["path"] and (studio.store.home / row["path"]).is_file():
            path = str(studio.store.home / row["path"])
        else:
            uploads = studio.home / "uploads"
            uploads.mkdir(exist_ok=True)
            file = uploads / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}-{field}"
            file.write_bytes(raw)
            written.append(file)
            path = str(file)
        shown[path] = str(item.get("name") or field)[:500]
        return path

    def build():
        kwargs = known_options(edit_request, data.get("options") or {},
                               taken=("studio", "source", "instruction", "mask", "progress"))
        source, mask = place("source"), place("mask")
        if source is None:
            raise ReverieError("source is the image to edit, as {\"b64\": BASE64, \"name\": NAME}")
        return edit_request(studio, source, str(data.get("instruction") or ""), mask=mask,
                            progress=lambda e: notices.append(e.data["message"]) if e.kind == "notice" else None,
                            **kwargs)

    try:
        req = await asyncio.to_thread(build)
    except (ReverieError, TypeError, ValueError) as e:
        message = str(e)
        for path, name in shown.items():  # said with the name the person gave, as in-process
            message = message.replace(path, name)
        return openai_error(400, message)
    finally:
        for file in written:  # the home keeps its own content-addressed copy (Source.image_path)
            file.unlink(missing_ok=True)
    return accepted(service, request_payload(req, notices=notices))


@router.get("/api/cli/result/{request_id}")
def result(request: Request, request_id: RowId):
    """`make --json`'s object for a finished request (the best min(n, 4), as in-process make keeps)."""
    service = request.app.state.service
    row = service.queue.get(request_id)
    if row is None:
        return openai_error(404, f"no request {request_id} on this server")
    job = service.job(request_id)
    if row["status"] != "done" or not row["run_id"]:
        return {"status": row["status"], "error": row["error"] or (job.error if job else None),
                "unexpected": bool(job and job.error and "logs/serve.log" in job.error)}
    payload = json.loads(row["payload_json"])
    made = service.studio.result(row["run_id"], k=min(payload["n"], 4))
    notices = payload.get("notices", []) + [e["message"] for e in (job.events if job else []) if e["kind"] == "notice"]
    return {"status": "done", "result": {**made.to_dict(), "notices": notices},
            "scorers": [r.scores.scorer if r.scores else None for r in made.best]}


# -- chat ----------------------------------------------------------------------------------
def session_name(data: dict) -> str:
    name = str(data.get("session") or "")
    if not name or len(name) > 200 or not name.isprintable():
        raise ReverieError("the session name is up to 200 printable characters")
    return name


@router.post("/api/cli/chat/open")
async def chat_open(request: Request):
    """A session by name (a new name when none is given) and its last turn, if it has one."""
    from reverie.orchestrator.chat import new_session_name, session_turns

    service = request.app.state.service
    data, refused = await cli_body(request)
    if refused is not None:
        return refused
    try:
        name = session_name({"session": data.get("session") or new_session_name()})
    except ReverieError as e:
        return openai_error(400, str(e))
    turns = session_turns(service.studio.store, name)
    last = {"turn": turns[-1]["turn"], "idea": turns[-1]["idea"]} if turns else None
    return {"session": name, "last": last}


@router.post("/api/cli/chat/command")
async def chat_command(request: Request):
    """A slash command or a choice ("I like the second one"): answered at once, nothing rendered."""
    from reverie.orchestrator.chat import chat_command as answer_command

    service = request.app.state.service
    data, refused = await cli_body(request)
    if refused is not None:
        return refused
    try:
        reply = await asyncio.to_thread(answer_command, service.studio, session_name(data), str(data.get("message") or ""))
    except ReverieError as e:
        return openai_error(400, str(e))
    return {"text": reply.text, "quit": reply.quit}


@router.post("/api/cli/chat/turn")
async def chat_turn(request: Request):
    """A turn on the server's session: a request of its own, its events as any other's."""
    service = request.app.state.service
    data, refused = await cli_body(request)
    if refused is not None:
        return refused
    try:
        options = known_options(service.studio.chat, data.get("options") or {},
                                taken=("session", "message", "progress", "stop", "interpreter", "on_open", "abandon"))
        payload = {"session": session_name(data), "message": str(data.get("message") or ""), "origin": "cli",
                   "n": options.pop("n", None) or 4, "rounds": options.pop("rounds", None),
                   "megapixels": options.pop("megapixels", None), "options": options}
        job = service.submit("chat", payload, keep=False)
    except Busy as e:
        return openai_error(429, str(e), kind="rate_limit_error")
    except ReverieError as e:
        return openai_error(400, str(e))
    return {"request_id": job.id, "events": f"/events/{job.id}"}


@router.get("/api/cli/chat/result/{request_id}")
def chat_result(request: Request, request_id: RowId):
    """The finished turn as `reverie chat` prints it: its number, run, reading, prompt and best images."""
    service = request.app.state.service
    row = service.queue.get(request_id)
    job = service.job(request_id)
    if row is None or row["kind"] != "chat":
        return openai_error(404, f"no chat turn {request_id} on this server")
    turn = next((e for e in reversed(job.events) if e["kind"] == "turn"), None) if job else None
    if turn is None:
        return {"status": row["status"], "error": row["error"] or (job.error if job else None),
                "unexpected": bool(job and job.error and "logs/serve.log" in job.error)}
    store = service.studio.store
    best = [store.render_by_id(i) for i in turn["best_ids"]]
    return {"status": row["status"], "turn": {
        "turn": turn["turn"], "run_id": job.run_id, "summary": turn["summary"], "prompt": turn["prompt"],
        "cancelled": turn["cancelled"] or row["status"] == "cancelled",
        "best": [{"id": r.id, "path": r.path, "seed": r.seed, "width": r.spec.width, "height": r.spec.height,
                  "prompt": r.prompt, "score": r.scores.composite if r.scores else None,
                  "scorer": r.scores.scorer if r.scores else None} for r in best]}}


# -- expand --------------------------------------------------------------------------------
@router.post("/api/cli/expand")
async def expand(request: Request):
    """`reverie expand` with the server's prompt writer (and its engine, for the encoder backend)."""
    from reverie.orchestrator.requests import clean_idea
    from reverie.profiles import get_profile

    service = request.app.state.service
    data, refused = await cli_body(request)
    if refused is not None:
        return refused
    studio = service.studio

    def work() -> list[dict]:
        k, seed = data.get("k", 1), data.get("seed", 0)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 8:
            raise ReverieError(f"k must be between 1 and 8 (got {k}): pass --k 3 for three interpretations")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ReverieError("seed is a whole number")
        text = clean_idea(str(data.get("idea") or ""))
        chosen = get_profile(str(data.get("profile") or studio.profile_name))
        engine = studio.engine_for(chosen, heard) if studio.llm_backend() == "encoder" else None
        expander, _ = studio.expander_and_critic(heard, engine)
        return [e.to_dict() for e in expander.expand(text, chosen, k=k, seed=seed)]

    notices: list[str] = []

    def heard(event) -> None:  # expand says its notices (which prompt writer), nothing else
        if event.kind == "notice":
            notices.append(event.data["message"])

    try:
        return {"expansions": await asyncio.to_thread(work), "notices": notices}
    except ReverieError as e:
        return openai_error(400, str(e))


# -- batch ---------------------------------------------------------------------------------
_batches: dict[str, dict[str, Any]] = {}  # token -> its stop flag and thread, while a CLI batch runs


@router.post("/api/cli/batch")
async def batch(request: Request):
    """A batch from its file's text, run here while the client listens: the answer streams its
    events as JSON lines and ends with the result. As with in-process batch, the batch lasts as
    long as its command: a client that hangs up (or says stop) interrupts it between images, and
    the same command continues it (the batch id is the text's and the options' hash)."""
    from reverie.orchestrator.batch import BatchOptions, BatchRunner, parse_batch_text

    service = request.app.state.service
    data, refused = await cli_body(request, limit=MAX_BATCH_TEXT + 64 * 1024)
    if refused is not None:
        return refused
    studio = service.studio
    text, source = data.get("text"), str(data.get("source") or "batch file")[:500]
    try:
        if not isinstance(text, str):
            raise ReverieError("text is the batch file's text")
        items = parse_batch_text(text, source=source)
        if any(item.references for item in items):
            raise ReverieError(f"{source} names reference images, which are files of the client's: run it with --local")
        options = data.get("options") or {}
        if not isinstance(options, dict):
            raise ReverieError("options must be a JSON object of the command's options")
        # The engine is the server's own; every other BatchOptions field travels as the client gave it.
        allowed = (set(BatchOptions.__dataclass_fields__) - {"engine"}) | {"retry_failed"}
        unknown = sorted(k for k in options if k not in allowed)
        if unknown:
            raise ReverieError(f"this server does not know {', '.join(unknown)}: restart it, or run with --local")
        retry_failed = bool(options.pop("retry_failed", False))
        opts = BatchOptions(**{"profile": studio.profile_name, **options, "engine": studio.engine_name})
        stop = threading.Event()
        events: "queue.Queue[Optional[dict]]" = queue.Queue()

        def progress(event) -> None:
            if stop.is_set():  # the batch's own Ctrl-C: raised where the runner expects it, between images
                raise KeyboardInterrupt
            events.put({"kind": event.kind, **event.data})

        runner = BatchRunner(studio, text, items, opts, source=source, progress=progress, retry_failed=retry_failed)
    except (ReverieError, TypeError, ValueError) as e:
        return openai_error(400, str(e))

    token = secrets.token_hex(8)
    box: dict[str, Any] = {"stop": stop, "done": threading.Event()}

    def work() -> None:
        try:
            made = runner.run()
            scorers = [[r.scores.scorer if r.scores else None for r in item.kept] for item in made.items]
            events.put({"kind": "result", "result": made.to_dict(), "scorers": scorers})
        except KeyboardInterrupt:
            events.put({"kind": "interrupted"})
        except ReverieError as e:
            events.put({"kind": "error", "message": str(e), "unexpected": False})
        except Exception as e:  # the server stays up; the client's one line says where the traceback is
            from reverie.logs import get

            get("serve").exception("batch %s from the CLI failed", runner.batch_id)
            events.put({"kind": "error", "unexpected": True,
                        "message": f"{type(e).__name__}: {e} (the traceback is in logs/serve.log in the server's home)"})
        finally:
            _batches.pop(token, None)
            box["done"].set()
            events.put(None)

    _batches[token] = box
    threading.Thread(target=work, name=f"reverie-cli-batch-{token}", daemon=True).start()

    async def stream():
        try:
            yield json.dumps({"kind": "accepted", "token": token}) + "\n"
            while True:
                try:
                    event = await asyncio.to_thread(events.get, True, 1.0)
                except queue.Empty:
                    continue
                if event is None:
                    return
                yield json.dumps(event, ensure_ascii=False, default=str) + "\n"
        finally:  # the client hung up (or the batch ended): a batch nobody follows is interrupted, as in-process
            if not box["done"].is_set():
                stop.set()

    return StreamingResponse(stream(), media_type="application/x-ndjson")


@router.post("/api/cli/batch/{token}/stop")
async def batch_stop(request: Request, token: str):
    """Ctrl-C in the client: interrupt the batch and answer once it has stopped (saved, resumable)."""
    box = _batches.get(token)
    if box is None:
        return {"stopped": True}
    box["stop"].set()
    return {"stopped": await asyncio.to_thread(box["done"].wait, STOP_WAIT)}


@router.get("/api/cli/status")
def status(request: Request):
    import os

    service = request.app.state.service
    running = [j for j in list(service.jobs.values()) if not j.done.is_set()]
    return {"home": str(service.studio.home), "profile": service.studio.profile_name, "running": len(running),
            "pid": os.getpid()}

