"""What the newer ways in (MCP, the A1111 API, the CLI over the warm server) share: start a run on
the server's one Studio, follow it, and read its best images with the why.

Built on today's ServeService (each run an accepted request on its own thread, recorded, resumed by
a restarted server) and Studio.best; when Studio.open_run lands, this module is what changes.
"""

from __future__ import annotations

import base64
import io
import json
import time
from typing import Any, Optional

from reverie.serve.service import Job, ServeService, render_card
from reverie.types import Render, ReverieError

MAX_N = 10
MAX_ROUNDS = 6
THUMB_SIDE = 384


def start_make(service: ServeService, idea: str, *, n: int = 4, rounds: int = 2, target: Optional[float] = None,
               aspect: str = "1:1", megapixels: float = 1.0, seed: Optional[int] = None,
               profile: Optional[str] = None, keep: bool = True, origin: str = "",
               references: Optional[list[dict]] = None) -> Job:
    """Accept a make on the server: checked as `reverie make` checks it, then run on its own thread."""
    from reverie.orchestrator.requests import validate_request
    from reverie.types import Reference, Request

    if not 1 <= int(n) <= MAX_N:
        raise ReverieError(f"n is the number of images per round, from 1 to {MAX_N}")
    if not 1 <= int(rounds) <= MAX_ROUNDS:
        raise ReverieError(f"rounds is from 1 to {MAX_ROUNDS}")
    profile = profile or service.studio.profile_name
    validate_request(Request(idea=idea, n=n, rounds=rounds, target=target, aspect=aspect, megapixels=megapixels,
                             profile=profile, seed=seed, references=tuple(Reference(**r) for r in references or ())))
    payload = {"prompt": idea, "n": int(n), "rounds": int(rounds), "target": target, "aspect": aspect,
               "megapixels": float(megapixels), "profile": profile, "seed": seed, "origin": origin}
    if references:  # only when given: a stored request without them stays the same
        payload["references"] = references
    return service.submit("images", payload, keep=keep)


def start_edit(service: ServeService, render_id: int, instruction: str, *, n: int = 4, rounds: int = 1,
               seed: Optional[int] = None) -> Job:
    """Accept an edit of an image of this home (the web studio's Edit form): checked as `reverie
    edit` checks it, then an edit run (Studio.edit's, as /v1/images/edits runs) on its own thread."""
    from reverie.orchestrator.edit import check_instruction

    if not 1 <= int(n) <= MAX_N:
        raise ReverieError(f"n is the number of images per round, from 1 to {MAX_N}")
    if not 1 <= int(rounds) <= MAX_ROUNDS:
        raise ReverieError(f"rounds is from 1 to {MAX_ROUNDS}")
    instruction = check_instruction(instruction)
    if service.queue.render(render_id) is None:
        raise ReverieError(f"no image {render_id} in this home: edit an image shown in the studio")
    return service.submit("edit", {"source": str(render_id), "instruction": instruction, "n": int(n),
                                   "rounds": int(rounds), "seed": seed}, keep=True)


def wait_for_run_id(job: Job, timeout: float = 120.0) -> Optional[str]:
    """The run id once the run has started (after the engine is chosen; seconds on a cold engine)."""
    end = time.monotonic() + timeout
    while job.run_id is None and not job.done.is_set() and time.monotonic() < end:
        time.sleep(0.05)
    return job.run_id


def job_for_run(service: ServeService, run_id: str) -> Optional[Job]:
    jobs = list(service.jobs.values())  # one C call: a snapshot even while a request is accepted
    return next((j for j in reversed(jobs) if j.run_id == run_id), None)


def progress_of(job: Optional[Job]) -> dict[str, Any]:
    """How far a running job is: renders done of the budget, and the latest thing that happened."""
    if job is None:
        return {}
    budget = next((e.get("budget") for e in job.events if e["kind"] == "run_started"), None)
    rendered = sum(1 for e in job.events if e["kind"] == "rendered")
    latest = next((e for e in reversed(job.events) if e["kind"] in ("expanded", "scored", "judged", "rendered")), None)
    return {"rendered": rendered, "budget": budget, "latest": describe(latest) if latest else "starting",
            "request_status": job.status, "error": job.error}


def describe(event: dict) -> str:
    kind = event["kind"]
    if kind == "rendered":
        return "rendered an image"
    if kind == "expanded":
        return f"round {event.get('round', 0) + 1}: wrote a prompt ({event.get('source', '')})"
    if kind == "scored":
        return f"scored: best {event.get('best', 0):.3f} ({event.get('scorer', '')})"
    if kind == "judged":
        return f"judged: {event.get('decision', '')} ({event.get('reason', '')})"
    return kind


def run_status(service: ServeService, run_id: str) -> dict[str, Any]:
    store = service.studio.store
    run = store.get_run(run_id)
    job = job_for_run(service, run["id"])
    status = run["status"]
    if job is not None and job.status == "failed":
        status = "failed"
    return {"run_id": run["id"], "idea": run["idea"], "status": status, "stop_reason": run["stop_reason"] or "",
            "renders": store.ok_count(run["id"]), **progress_of(job)}


def finished(service: ServeService, run_id: str) -> bool:
    job = job_for_run(service, run_id)
    if job is not None:
        return job.done.is_set()
    return service.studio.store.get_run(run_id)["status"] != "running"


def why(service: ServeService, render: Render, rank: int, total: int) -> str:
    """One sentence a person reads: its score and by what, the prompt it came from and why that
    prompt, and why the run stopped."""
    from reverie.store.lineage import lineage

    store = service.studio.store
    info = lineage(store, store.render_row(render.id))
    parts = []
    scores = info["scores"]
    if scores:
        parts.append(f"#{rank} of {total} renders by composite score {scores['composite']:.3f} ({scores['scorer']}"
                     f"{', weighting ' + info['weighting'] if info['weighting'] not in (None, 'default') else ''})")
    prompts = info["prompts"]
    if prompts:
        last = prompts[-1]
        origin = f"round {last['round']} prompt from the {last['source']}"
        parts.append(origin + (f": {last['reason']}" if last.get("reason") else ""))
    judge = store.judge_pick(render.run_id)
    if judge is not None and judge["render_id"] == render.id:
        parts.append(f"the vision judge's pick{': ' + judge['note'] if judge.get('note') else ''}")
    stop = info["run"]["status"]
    run = store.get_run(render.run_id)
    if run.get("stop_reason"):
        parts.append(f"run {stop}: {run['stop_reason']}")
    return "; ".join(parts)


def best_cards(service: ServeService, run_id: str, k: int = 4, base_url: str = "") -> list[dict[str, Any]]:
    """The run's best k (near-duplicates left out, a judge's pick first), each with where it is and why."""
    store = service.studio.store
    best = service.studio.best(run_id, k=k)
    total = store.ok_count(run_id)
    cards = []
    for rank, r in enumerate(best, 1):
        card = render_card(r)
        card.update(path=r.path, url=(base_url.rstrip("/") + card["url"]) if base_url else card["url"],
                    why=why(service, r, rank, total))
        cards.append(card)
    return cards


def thumbnail_png(path: str, side: int = THUMB_SIDE) -> bytes:
    """A small PNG of an image (an agent's context needs the look, not the megapixels)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((side, side))
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return buf.getvalue()


def png_b64(path: str) -> str:
    with open(path, "rb") as f:
        return base64.b64encode(f.read()).decode("ascii")


def as_json(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, default=str)


# -- batches -------------------------------------------------------------------------------
MAX_BATCH_IDEAS = 200
_batches: dict[str, dict[str, Any]] = {}  # batch id -> its thread and how it ended, in this process


def start_batch(service: ServeService, ideas: list[str], *, per_prompt: int = 4, keep: int = 2,
                timeout: float = 120.0) -> str:
    """Run a list of ideas as a batch on the server's Studio, in the background; its batch id.
    The ideas go to a JSONL file this process writes in the home (no path comes from a request)."""
    import secrets
    import threading

    from reverie.orchestrator.requests import clean_idea

    ideas = [str(i) for i in ideas if str(i).strip()]
    if not ideas:
        raise ReverieError("ideas is a list of one or more ideas, e.g. [\"a fox in the rain\", \"a lighthouse at dusk\"]")
    if len(ideas) > MAX_BATCH_IDEAS:
        raise ReverieError(f"a batch holds at most {MAX_BATCH_IDEAS} ideas: split the list")
    for idea in ideas:
        clean_idea(idea)
    if not 1 <= int(per_prompt) <= 64 or not 1 <= int(keep) <= 16:
        raise ReverieError("per_prompt is from 1 to 64 renders per idea, keep from 1 to 16 images")
    folder = service.studio.home / "mcp"
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / time.strftime(f"batch-%Y%m%d-%H%M%S-{secrets.token_hex(3)}.jsonl")
    file.write_text("".join(json.dumps({"idea": i}, ensure_ascii=False) + "\n" for i in ideas), encoding="utf-8")
    started = threading.Event()
    box: dict[str, Any] = {"status": "running", "error": None, "batch_id": None}

    def progress(event) -> None:
        if event.kind == "batch_started":
            box["batch_id"] = event.data["batch_id"]
            _batches[box["batch_id"]] = box
            started.set()

    def work() -> None:
        try:
            service.studio.batch(file, per_prompt=int(per_prompt), keep=int(keep), progress=progress)
            box["status"] = "done"
        except Exception as e:  # the batch's own rows say which ideas failed; this says why it stopped
            from reverie.logs import get

            get("serve").exception("batch from %s failed", file.name)
            box["status"], box["error"] = "failed", f"{type(e).__name__}: {e}"
        finally:
            started.set()

    threading.Thread(target=work, name="reverie-batch", daemon=True).start()
    started.wait(timeout)
    if box["batch_id"] is None:
        raise ReverieError(box["error"] or "the batch did not start in time: see logs/serve.log in the server's home")
    return box["batch_id"]


def batch_status(service: ServeService, batch_id: str, base_url: str = "") -> dict[str, Any]:
    store = service.studio.store
    found = store.batches.summaries(batch_id=batch_id) if batch_id.replace("-", "").isalnum() and len(batch_id) <= 64 else []
    if not found:
        raise ReverieError(f"no batch {batch_id!r} in this home: use the batch id batch_start returned")
    summary = found[0]
    here = _batches.get(batch_id)
    items = []
    for it in store.batches.items(batch_id):
        kept = [store.render_by_id(k["render_id"]) for k in store.batches.keeps(it["id"])]
        items.append({"index": it["idx"] + 1, "idea": it["idea"], "status": it["status"], "run_id": it["run_id"],
                      "error": it.get("error") or None,
                      "kept": [{"id": r.id, "path": r.path, "url": base_url.rstrip("/") + f"/files/{r.sha256}.png",
                                "score": r.scores.composite if r.scores else None} for r in kept]})
    return {"batch_id": batch_id, "status": (here or {}).get("status") or summary["status"],
            "error": (here or {}).get("error"), "ideas": summary["ideas"] or 0, "done": summary["done"] or 0,
            "failed": summary["failed"] or 0, "items": items}


# -- exact renders (the A1111 API's "render the prompt as written") ------------------------
MAX_STEPS = 100


def render_exact(service: ServeService, prompt: str, *, negative: str = "", count: int = 1, seed: Optional[int] = None,
                 aspect: str = "1:1", megapixels: float = 1.0, steps: Optional[int] = None,
                 profile: Optional[str] = None) -> tuple[str, list[Render]]:
    """Render the prompt as written, no expansion, no loop: count seeds on the warm engine,
    recorded as a run of its own (one prompt, its renders), so every image keeps its lineage."""
    import secrets

    from reverie.orchestrator.requests import render_size, validate_request
    from reverie.profiles import get_profile
    from reverie.types import Expansion, Request, RenderSpec

    studio, store = service.studio, service.studio.store
    profile_obj = get_profile(profile or studio.profile_name)
    if not 1 <= count <= MAX_N:
        raise ReverieError(f"batch_size × n_iter is at most {MAX_N} images")
    if steps is not None and not 1 <= int(steps) <= MAX_STEPS:
        raise ReverieError(f"steps is from 1 to {MAX_STEPS}")
    req = validate_request(Request(idea=prompt, n=count, rounds=1, aspect=aspect, megapixels=megapixels,
                                   profile=profile_obj.name, seed=seed, steps=steps))
    engine = studio.engine_for(profile_obj, lambda e: None)
    width, height = render_size(req, profile_obj, engine)
    base_seed = seed if seed is not None else secrets.randbelow(2**31)
    run_id = store.create_run(req, engine.name, base_seed, identity=getattr(engine, "identity", engine.name))
    try:
        prompt_id = store.add_prompt(run_id, Expansion(prompt=prompt, negative=negative, source="exact",
                                                       reason="rendered as written (A1111 API, exact mode)"), round=0)
        specs = [RenderSpec(prompt=prompt, negative=negative if profile_obj.negative else "", seed=base_seed + i,
                            width=width, height=height, steps=int(steps or profile_obj.steps),
                            guidance=profile_obj.guidance, profile=profile_obj.name, sampler=profile_obj.sampler,
                            shift=profile_obj.shift)
                 for i in range(count)]
        outputs = studio.worker.render(engine, specs, priority=(0, profile_obj.name, 0))
        failed = [o.error for o in outputs if o.error or o.image is None]
        if len(failed) == len(outputs):
            raise ReverieError(f"the engine could not render it: {failed[0]}")
        batch = getattr(engine, "batch_size", None)
        ids = [store.add_render(run_id, prompt_id, 0, o, batch_size=batch) for o in outputs]
    except BaseException as e:
        store.finish_run(run_id, "failed", str(e) or type(e).__name__)
        raise
    store.finish_run(run_id, "done", "rendered as written (exact mode)")
    renders = [store.render_by_id(i) for i in ids]
    return run_id, [r for r in renders if r.path]
