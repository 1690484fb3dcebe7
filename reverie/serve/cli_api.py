"""What `reverie make` calls when a `reverie serve` already runs for its home: the same run on the
warm engine, its progress as the events any request has, and the answer in `make --json`'s shape."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request

from reverie.serve import doors
from reverie.serve.http import openai_error, read_json
from reverie.serve.service import Busy
from reverie.types import ReverieError

router = APIRouter()


@router.post("/api/cli/make")
async def make(request: Request):
    service = request.app.state.service
    data = await read_json(request)
    home = data.get("home")
    if home is not None and Path(str(home)).resolve() != Path(service.studio.home).resolve():
        # Two homes never share a server: the client found this one through another home's file.
        return openai_error(409, "this server serves another home: run with --local, or start `reverie serve` "
                                 "for this home", code="other_home")
    try:
        job = doors.start_make(service, str(data.get("idea") or ""), n=int(data.get("n", 4)),
                               rounds=int(data.get("rounds", 2)), target=data.get("target"),
                               aspect=str(data.get("aspect", "1:1")), megapixels=float(data.get("megapixels", 1.0)),
                               seed=data.get("seed"), profile=data.get("profile"), keep=False, origin="cli")
    except Busy as e:
        return openai_error(429, str(e), kind="rate_limit_error")
    except (ReverieError, TypeError, ValueError) as e:
        return openai_error(400, str(e))
    return {"request_id": job.id, "events": f"/events/{job.id}"}


@router.get("/api/cli/result/{request_id}")
def result(request: Request, request_id: int):
    """`make --json`'s object for a finished request (the best min(n, 4), as in-process make keeps)."""
    import json

    service = request.app.state.service
    row = service.queue.get(request_id)
    if row is None:
        return openai_error(404, f"no request {request_id} on this server")
    job = service.job(request_id)
    if row["status"] != "done" or not row["run_id"]:
        return {"status": row["status"], "error": row["error"] or (job.error if job else None),
                "unexpected": bool(job and job.error and "logs/serve.log" in job.error)}
    n = json.loads(row["payload_json"])["n"]
    made = service.studio.result(row["run_id"], k=min(n, 4))
    notices = [e["message"] for e in (job.events if job else []) if e["kind"] == "notice"]
    return {"status": "done", "result": {**made.to_dict(), "notices": notices},
            "scorers": [r.scores.scorer if r.scores else None for r in made.best]}


@router.get("/api/cli/status")
def status(request: Request):
    service = request.app.state.service
    running = [j for j in list(service.jobs.values()) if not j.done.is_set()]
    return {"home": str(service.studio.home), "profile": service.studio.profile_name, "running": len(running),
            "pid": __import__("os").getpid()}
