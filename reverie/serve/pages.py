"""The web studio: server-rendered pages (Jinja2, autoescaped) and the small JSON routes their script calls."""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import time
from pathlib import Path
from typing import Any, Optional
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from jinja2 import Environment, FileSystemLoader

from reverie.serve.http import RowId, openai_error, read_json, row_id
from reverie.serve.service import Busy, render_card
from reverie.types import ReverieError

router = APIRouter()
TEMPLATES = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=True)
MAX_WEB_IMAGES = 8
WEB_ROUNDS = {"standard": 1, "hd": 3}
GALLERY_RUNS = 30
GALLERY_BATCHES = 10
COOKIE = "reverie_token"


def page(name: str, **context: Any) -> HTMLResponse:
    return HTMLResponse(TEMPLATES.get_template(name).render(**context))


def new_session() -> str:
    return time.strftime("web-%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def gallery(service, limit: int = GALLERY_RUNS) -> list[dict]:
    """Recent runs, newest first, each with its best images and what started it (a chat turn, a batch)."""
    from reverie.store.lineage import caused_by

    store = service.studio.store
    runs = []
    for run in store.list_runs(limit=limit):
        runs.append({"id": run["id"], "idea": run["idea"], "status": run["status"], "best": run["best"],
                     "renders": run["renders"], "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(run["created"])),
                     "images": [render_card(r) for r in store.best(run["id"], k=4)],
                     "origin": caused_by(store, run["id"])})
    return runs


# -- pages -----------------------------------------------------------------------------------
@router.get("/login")
def login_page(request: Request, failed: int = 0):
    return page("login.html", failed=bool(failed))


@router.post("/login")
async def login(request: Request):
    token = request.app.state.token
    form = parse_qs((await request.body())[:4096].decode("utf-8", "replace"))
    given = (form.get("token") or [""])[0]
    if token and not hmac.compare_digest(given.encode(), token.encode()):
        return RedirectResponse("/login?failed=1", status_code=303)
    response = RedirectResponse("/", status_code=303)
    if token:
        response.set_cookie(COOKIE, given, httponly=True, samesite="strict")
    return response


@router.get("/")
def studio_page(request: Request, session: Optional[str] = None, recipe: Optional[int] = None):
    service = request.app.state.service
    session = session if session and session.replace("-", "").isalnum() and len(session) <= 64 else new_session()
    from reverie.orchestrator.chat import shown_images

    store = service.studio.store
    turns, previous = [], ""
    for t in store.chats.turns(session):
        prompt = last_prompt(store, t["run_id"])
        turns.append({"turn": t["turn"], "message": t["message"], "idea": t["idea"], "run_id": t["run_id"],
                      "prompt": prompt, "diff": prompt_diff(previous, prompt) if previous and prompt else [],
                      "images": [render_card(r) for r in shown_images(service.studio, t)]})
        previous = prompt or previous
    return page("studio.html", session=session, turns=turns, runs=gallery(service), live=live_turns(service, session),
                batches=[batch_summary(b) for b in store.batches.summaries(GALLERY_BATCHES)],
                profile=service.studio.profile_name, form=recipe_form(service, recipe), samplers=sampler_names(),
                styles=service.studio.style_names())


def sampler_names() -> list[str]:
    from reverie.render.families import COMFY_ONLY_SAMPLERS, SAMPLERS

    return [*SAMPLERS, *COMFY_ONLY_SAMPLERS]


def last_prompt(store, run_id: Optional[str]) -> str:
    """The prompt a turn's last round rendered (after the critic's rewrites)."""
    prompts = store.prompts(run_id) if run_id else []
    return prompts[-1]["text"] if prompts else ""


def prompt_diff(before: str, after: str) -> list[tuple[str, str]]:
    """Word by word: ("same" | "added" | "removed", text), what changed from one turn's prompt to the next."""
    import difflib

    old, new = before.split(), after.split()
    parts: list[tuple[str, str]] = []
    for op, a1, a2, b1, b2 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        if op == "equal":
            parts.append(("same", " ".join(new[b1:b2])))
            continue
        if a2 > a1:
            parts.append(("removed", " ".join(old[a1:a2])))
        if b2 > b1:
            parts.append(("added", " ".join(new[b1:b2])))
    return parts


def live_turns(service, session: str) -> list[dict]:
    """This session's requests still running here: a reloaded page follows them again from their first event."""
    jobs = [j for j in list(service.jobs.values()) if j.kind == "chat" and not j.done.is_set()
            and j.payload.get("session") == session]
    return [{"id": j.id, "message": j.payload.get("message", ""), "events": f"/events/{j.id}"}
            for j in sorted(jobs, key=lambda j: j.id)]


def recipe_form(service, render_id: Optional[int]) -> dict:
    """The form's fields: the defaults, or an image's settings ("use this recipe") to make it again or vary it."""
    form = {"idea": "", "n": 4, "steps": "", "cfg": "", "negative": "", "sampler": "", "seed": "", "exact": False,
            "recipe": None}
    row = service.queue.render(render_id) if render_id is not None else None
    if row is None:
        return form
    from reverie.profiles import get_profile
    from reverie.types import RenderSpec

    spec = RenderSpec.from_dict(json.loads(row["spec_json"]))
    try:
        cfg = get_profile(spec.profile).traits.cfg_scale(spec.guidance)
    except ReverieError:
        cfg = spec.guidance
    return {**form, "idea": spec.prompt, "steps": spec.steps, "cfg": cfg, "negative": spec.negative,
            "sampler": spec.sampler, "seed": spec.seed, "exact": True, "recipe": row["id"]}


def batch_summary(b: dict) -> dict:
    # The file's name only: the full path says nothing the page needs and is the machine's business.
    return {"id": b["id"], "source": Path(b["source"] or "").name, "status": b["status"], "ideas": b["ideas"] or 0,
            "done": b["done"] or 0, "failed": b["failed"] or 0,
            "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(b["created"]))}


@router.get("/batch/{batch_id}")
def batch_page(request: Request, batch_id: str):
    """One batch: each idea with its status, budget and the images it kept (best first)."""
    store = request.app.state.service.studio.store
    found = store.batches.summaries(batch_id=batch_id) if batch_id.isalnum() and len(batch_id) <= 64 else []
    if not found:
        return HTMLResponse(TEMPLATES.get_template("missing.html").render(what=f"batch {batch_id}"), status_code=404)
    items = []
    for it in store.batches.items(batch_id):
        kept = [k["render_id"] for k in store.batches.keeps(it["id"])]
        images = ([render_card(store.render_by_id(rid)) for rid in kept] if kept
                  else [render_card(r) for r in store.best(it["run_id"], k=4)] if it["run_id"] else [])
        items.append({"idx": it["idx"] + 1, "idea": it["idea"], "status": it["status"], "error": it.get("error") or "",
                      "budget": it["budget"], "renders": store.ok_count(it["run_id"]) if it["run_id"] else 0,
                      "run_id": it["run_id"], "images": images, "kept": bool(kept)})
    return page("batch.html", batch=batch_summary(found[0]), items=items)


@router.get("/image/{render_id}")
def image_page(request: Request, render_id: RowId):
    from reverie.store.lineage import lineage

    service = request.app.state.service
    store = service.studio.store
    row = service.queue.render(render_id)
    if row is None:
        return HTMLResponse(TEMPLATES.get_template("missing.html").render(what=f"image {render_id}"), status_code=404)
    info = lineage(store, row)
    standing = store.picks.standing([render_id]).get(render_id)
    siblings = [render_card(r) for r in store.best(row["run_id"], k=8)]
    from reverie.scoring.display import held_out_judges
    from reverie.scoring.explain import explain_scores

    return page("image.html", info=info, image=render_card(store.to_render(row)), standing=standing,
                judges=held_out_judges(info["scores"] or {}), explained=explain_scores(info["scores"] or {}),
                spec_json=json.dumps(info["spec"], indent=2, ensure_ascii=False),
                request_json=json.dumps(info["request"], indent=2, ensure_ascii=False), siblings=siblings)


# -- what the pages' script calls ---------------------------------------------------------
@router.post("/api/studio/send")
async def send(request: Request):
    """A message of the web studio: the first makes images, later ones follow up on the same session."""
    service = request.app.state.service
    data = await read_json(request)
    session, message = str(data.get("session") or ""), str(data.get("message") or "")
    if not session.replace("-", "").isalnum() or len(session) > 64:
        return openai_error(400, "the session name is letters, digits and dashes: reload the page for a new one")
    quality = str(data.get("quality") or "standard")
    if quality not in WEB_ROUNDS:
        return openai_error(400, "quality is standard (one round) or hd (the full loop)")
    try:
        n = int(data.get("n") or 4)
    except (TypeError, ValueError):
        n = 0
    if not 1 <= n <= MAX_WEB_IMAGES:
        return openai_error(400, f"n is the number of images per round, from 1 to {MAX_WEB_IMAGES}")
    from reverie.orchestrator.chat import is_command
    from reverie.orchestrator.requests import clean_idea

    if is_command(message.strip()):
        return openai_error(400, "slash commands are for `reverie chat`: describe an image, or say what to change")
    try:
        clean_idea(message)
        controls = web_controls(data, service.studio.style_names())
        # Web turns are kept: closing the tab leaves the run going, and its images land in the gallery.
        job = service.submit("chat", {"session": session, "message": message, "n": n,
                                      "rounds": WEB_ROUNDS[quality], "megapixels": None, **controls}, keep=True)
    except Busy as e:
        return openai_error(429, str(e), kind="rate_limit_error")
    except ReverieError as e:
        return openai_error(400, str(e))
    return {"request_id": job.id, "events": f"/events/{job.id}"}


def web_controls(data: dict, style_names: list[str]) -> dict:
    """The form's controls (steps, CFG, sampler, seed, negative, exact), checked; those left empty are left out."""
    out: dict[str, Any] = {}
    for key, kind, low, high in (("steps", int, 1, 200), ("cfg", float, 1.0, 30.0), ("seed", int, 0, 2**62)):
        value = data.get(key)
        if value is None or value == "":
            continue
        try:
            number = kind(value)
            if kind is int and number != float(value):
                raise ValueError
        except (TypeError, ValueError, OverflowError):
            raise ReverieError(f"{key} is a number from {low} to {high} (got {str(value)[:20]!r})") from None
        if not low <= number <= high:
            raise ReverieError(f"{key} is a number from {low} to {high} (got {number})")
        out[key] = number
    sampler = data.get("sampler")
    if sampler:
        if sampler not in sampler_names():
            raise ReverieError(f"unknown sampler {str(sampler)[:40]!r}: use one of {', '.join(sampler_names())}")
        out["sampler"] = sampler
    negative = data.get("negative")
    if negative:
        out["negative"] = str(negative)[:2000]
    if data.get("exact") is True:
        out["exact"] = True
    if data.get("style"):
        if data["style"] not in style_names:
            raise ReverieError(f"unknown style {str(data['style'])[:40]!r}: reverie.toml defines "
                               f"{', '.join(style_names) or 'none'}")
        out["style"] = data["style"]
    return out


@router.post("/api/images/{render_id}/edit")
async def edit_image(request: Request, render_id: RowId):
    """The image page's Edit form: an edit run of this image; its events follow as a turn's do."""
    from reverie.serve.doors import start_edit

    service = request.app.state.service
    if service.queue.render(render_id) is None:
        return openai_error(404, "no such image: give the render id of an image of this home")
    data = await read_json(request)
    try:
        n = int(data.get("n", 2))
    except (TypeError, ValueError):
        n = 0
    if not 1 <= n <= MAX_WEB_IMAGES:
        return openai_error(400, f"n is the number of images, from 1 to {MAX_WEB_IMAGES}")
    try:
        job = start_edit(service, render_id, str(data.get("instruction") or ""), n=n)
    except Busy as e:
        return openai_error(429, str(e), kind="rate_limit_error")
    except ReverieError as e:
        return openai_error(400, str(e))
    return {"request_id": job.id, "events": f"/events/{job.id}", "source": render_id}


@router.get("/events/{request_id}")
async def events(request: Request, request_id: RowId):
    """Server-sent events of one request: rendered, scored, judged... then done or failed."""
    service = request.app.state.service
    job = service.job(request_id)
    if job is None:
        row = service.queue.get(request_id)
        if row is None:
            return openai_error(404, f"no request {request_id} on this server")
        # Finished (or from before a restart): one event with where things stand.
        return StreamingResponse(iter([sse({"kind": row["status"], "run_id": row["run_id"], "message": row["error"]})]),
                                 media_type="text/event-stream")

    async def stream():
        sent = 0
        while True:
            finished = job.done.is_set()
            while sent < len(job.events):
                yield sse(job.events[sent])
                sent += 1
            if finished and sent >= len(job.events):
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.15)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


def sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


@router.get("/api/requests/{request_id}")
def request_status(request: Request, request_id: RowId):
    """Where an accepted request stands (a client that went away finds its run here, or in the gallery)."""
    service = request.app.state.service
    row = service.queue.get(request_id)
    if row is None:
        return openai_error(404, f"no request {request_id} on this server")
    best = []
    if row["run_id"] and row["status"] == "done":
        n = json.loads(row["payload_json"])["n"]
        best = [render_card(r) for r in service.studio.best(row["run_id"], k=n, fill=True)]
    return {"id": row["id"], "kind": row["kind"], "status": row["status"], "run_id": row["run_id"],
            "error": row["error"], "best": best}


def job_state(job) -> str:
    """Where a running request stands, in the words the queue panel shows, from its latest events."""
    rendered, of = 0, None
    state = "queued"
    for e in job.events:
        kind = e.get("kind")
        if kind == "loading":
            state = f"loading the {e.get('what', 'engine')} for {e.get('profile', 'the profile')}"
        elif kind == "run_started":
            state, of = "writing the prompt", e.get("n")
        elif kind == "writing":
            state = f"writing the prompt · {e.get('tokens', 0)} tokens"
        elif kind == "round_started":
            rendered, of = 0, e.get("todo", e.get("n"))
            state = "waiting for the engine"
        elif kind == "step" or (kind == "engine_progress" and e.get("step")):
            state = f"rendering {rendered + 1}/{of or '?'} · step {e.get('step')}/{e.get('steps')}"
        elif kind == "rendered":
            rendered += 1
            state = f"rendering {min(rendered + 1, of or rendered + 1)}/{of or '?'}" if rendered < (of or 0) else "scoring"
        elif kind == "scored":
            state = "scoring" if rendered < (of or 0) else "judging the round"
    return state


@router.get("/api/queue")
def queue_panel(request: Request):
    """The requests running on this server, oldest first, each with its state and its place in line."""
    service = request.app.state.service
    jobs = sorted((j for j in list(service.jobs.values()) if not j.done.is_set()), key=lambda j: j.id)
    items, waiting = [], 0
    for job in jobs:
        state = job_state(job)
        position = None
        if state in ("queued", "waiting for the engine"):
            waiting += 1
            position = waiting
        items.append({"id": job.id, "kind": job.kind, "session": job.payload.get("session"),
                      "what": job.payload.get("message") or job.payload.get("prompt") or job.payload.get("instruction") or "", "state": state,
                      "position": position, "stopping": job.person_stop.is_set()})
    return {"requests": items}


@router.post("/api/requests/{request_id}/stop")
def stop_request(request: Request, request_id: RowId):
    """Stop a request between images; what it rendered is kept (a chat turn stays in its session)."""
    if not request.app.state.service.stop(request_id):
        return openai_error(404, f"request {request_id} is not running on this server")
    return {"id": request_id, "stopping": True}


@router.post("/api/pick")
async def pick(request: Request):
    service = request.app.state.service
    data = await read_json(request)
    choice = data.get("choice")
    if choice not in ("pick", "reject"):
        return openai_error(400, "choice is pick or reject")
    render_id = row_id(data.get("render_id"))
    if render_id is None or service.queue.render(render_id) is None:
        return openai_error(404, "no such image: give the render id of an image of this home")
    service.studio.store.picks.record(render_id, choice, source="web")
    return {"render_id": render_id, "standing": service.studio.store.picks.standing([render_id]).get(render_id)}


@router.post("/api/reproduce/{render_id}")
async def reproduce(request: Request, render_id: RowId):
    service = request.app.state.service
    if service.queue.render(render_id) is None:
        return openai_error(404, "no such image: give the render id of an image of this home")
    try:
        return await asyncio.to_thread(service.reproduce, render_id)
    except ReverieError as e:
        return openai_error(400, str(e))


@router.get("/healthz")
def health() -> Response:
    return JSONResponse({"ok": True})
