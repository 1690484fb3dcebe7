"""The server's side of every request: accepted requests become runs on one Studio.

One Studio means one warm engine: every request's run hands its rounds to the Studio's engine
worker, as the ideas of a batch do, each run on its own thread. A request is a row in the store
before it runs (`serve_requests`), so a server killed mid-run leaves it open and the next server
on the home finishes it; the run resumes by request (same seed, same request hash), so nothing
is rendered twice.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from reverie.logs import get
from reverie.orchestrator.studio import Studio
from reverie.store.locks import RunLock
from reverie.store.serve_requests import ServeRequests
from reverie.types import Event, Render, ReverieError

MAX_OPEN = 64  # requests running at once; more are refused with "busy" rather than queued without end
KEEP_FINISHED = 256  # finished jobs whose events stay in memory; older ones are read from the store


class Busy(ReverieError):
    """Too many requests running: the client should try again later (HTTP 429)."""
EVENT_KINDS = ("loading", "writing", "run_started", "expanded", "round_started", "step", "engine_progress", "rendered",
               "scored", "judged", "finished", "notice", "queued")


@dataclass
class Job:
    """One accepted request while this process runs it: its stop flag and its events for SSE."""

    id: int
    kind: str
    payload: dict[str, Any]
    keep: bool
    stop: threading.Event = field(default_factory=threading.Event)
    # Set only by the person's stop button: a chat turn stops on it (a shutdown leaves web turns
    # running to the end, so their sessions stay whole), and the job ends "cancelled", not "done".
    person_stop: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    events: list[dict] = field(default_factory=list)
    run_id: Optional[str] = None
    status: str = "accepted"
    error: Optional[str] = None
    best: list[Render] = field(default_factory=list)

    def emit(self, kind: str, data: dict) -> None:
        self.events.append({"kind": kind, **data})


def render_card(r: Render) -> dict:
    """What a page or an event shows of one image (URLs by content hash, never by path)."""
    return {"id": r.id, "sha256": r.sha256, "url": f"/files/{r.sha256}.png", "page": f"/image/{r.id}",
            "seed": r.seed, "round": r.round + 1, "width": r.spec.width, "height": r.spec.height,
            "score": r.scores.composite if r.scores else None, "scorer": r.scores.scorer if r.scores else None,
            "prompt": r.prompt, **edit_parent(r)}


def edit_parent(r: Render) -> dict:
    """An edit's parent, for its card: the image of this home it was made from (a file from outside has no page)."""
    source = getattr(r.spec, "source", None)
    if source is None:
        return {}
    parent = source.render_id
    return {"parent": {"id": parent, "page": f"/image/{parent}" if parent is not None else None,
                       "sha256": source.image_sha, "instruction": source.instruction}}


class ServeService:
    def __init__(self, studio: Studio):
        self.studio = studio
        studio.previews = True  # the web studio and SSE clients see each image take shape
        self.queue = ServeRequests(studio.store)
        self.jobs: dict[int, Job] = {}
        self._lock = threading.Lock()
        self._sessions: dict[str, threading.Lock] = {}  # one turn at a time per chat session
        self._locks: dict[int, RunLock] = {}
        self._closing = False  # a shutdown stops runs but leaves their requests open for the next server
        self.shutdown = threading.Event()  # set when the server stops: a chat turn is left to the next start

    # -- accepting -------------------------------------------------------------------------
    def submit(self, kind: str, payload: dict[str, Any], keep: bool) -> Job:
        with self._lock:
            if sum(1 for j in self.jobs.values() if not j.done.is_set()) >= MAX_OPEN:
                raise Busy(f"the server is busy with {MAX_OPEN} requests: try again when some have finished")
            finished = [i for i, j in self.jobs.items() if j.done.is_set()]
            for i in finished[:max(0, len(finished) - KEEP_FINISHED)]:
                del self.jobs[i]
        if kind in ("images", "edit") and payload.get("seed") is None:
            # Chosen now and stored: a restarted server asks for the same request, which resumes the run.
            payload = {**payload, "seed": secrets.randbelow(2**31)}
        request_id = self.queue.accept(kind, payload, keep)
        job = self._start(request_id, kind, payload, keep)
        if job is None:  # a second server on this home, starting up, took it over in that instant
            raise ReverieError(f"request {request_id} was taken over by another server on this home: its result "
                               f"will be at /api/requests/{request_id} there")
        return job

    def recover(self) -> list[Job]:
        """Finish what an earlier server accepted and did not end (killed, crashed)."""
        jobs = []
        for row in self.queue.open_requests():
            job = self._start(row["id"], row["kind"], json.loads(row["payload_json"]), bool(row["keep"]))
            if job is not None:
                jobs.append(job)
        return jobs

    def _start(self, request_id: int, kind: str, payload: dict, keep: bool) -> Optional[Job]:
        """Run an accepted request on its own thread, holding its lock (None: another server holds it)."""
        lock = RunLock(self.studio.home, f"serve-{request_id}")
        if not lock.acquire():  # another live server on this home has it
            return None
        job = Job(id=request_id, kind=kind, payload=payload, keep=keep)
        with self._lock:
            self.jobs[request_id] = job
            self._locks[request_id] = lock
        threading.Thread(target=self._work, args=(job,), name=f"reverie-serve-{request_id}", daemon=True).start()
        return job

    def stop(self, request_id: int) -> bool:
        """Stop a running request between images (the web studio's stop button); False if not running here."""
        job = self.job(request_id)
        if job is None or job.done.is_set():
            return False
        job.person_stop.set()
        job.stop.set()
        return True

    def job(self, request_id: int) -> Optional[Job]:
        with self._lock:
            return self.jobs.get(request_id)

    # -- running ---------------------------------------------------------------------------
    def _progress(self, job: Job):
        store = self.studio.store
        # A `scored` event sends the cards of the images stored since the last one, not the whole
        # run again; the first in each run sends them all (a resumed run has older images to show).
        unscored: list[int] = []
        shown: set[str] = set()

        def progress(event: Event) -> None:
            if event.kind not in EVENT_KINDS:
                return
            data = {k: v for k, v in event.data.items() if isinstance(v, (str, int, float, bool, type(None)))}
            if event.kind == "rendered":
                row = store.render_row(event.data["render_id"])
                if row["status"] == "ok":  # a failed or blank render has no image to show
                    data["image"] = render_card(store.to_render(row))
                    unscored.append(row["id"])
            if event.kind == "step" and data.get("preview"):
                # Only the newest preview is kept in memory: a client that comes back needs no older ones.
                for earlier in reversed(job.events):
                    if earlier.get("kind") == "step" and earlier.get("preview"):
                        earlier["preview"] = None
                        break
            if event.kind == "scored" and job.run_id:
                fresh = store.renders_by_ids(unscored) if job.run_id in shown else store.renders(job.run_id)
                shown.add(job.run_id)
                unscored.clear()
                data["images"] = [render_card(r) for r in fresh]
            job.emit(event.kind, data)

        return progress

    def _work(self, job: Job) -> None:
        from reverie.orchestrator.worker import RenderStopped

        try:
            job.status = "running"
            if job.kind == "images":
                self._images(job)
            elif job.kind == "edit":
                self._edit(job)
            else:
                self._chat(job)
            if job.person_stop.is_set():  # stopped by its person: kept with what it rendered
                job.status = "cancelled"
                job.emit("cancelled", {"run_id": job.run_id, "best": [render_card(r) for r in job.best]})
            else:
                job.status = "done"
                job.emit("done", {"run_id": job.run_id, "best": [render_card(r) for r in job.best]})
        except RenderStopped:
            job.status = "cancelled"
            job.emit("cancelled", {"run_id": job.run_id})
        except ReverieError as e:
            get("serve").warning("request %s (%s) failed: %s", job.id, job.kind, e, exc_info=True)
            job.status, job.error = "failed", str(e)
            job.emit("failed", {"message": str(e)})
        except Exception as e:  # the server stays up; the request says what broke, the log how
            get("serve").exception("request %s (%s) failed", job.id, job.kind)
            job.status, job.error = "failed", f"{type(e).__name__}: {e} (the traceback is in logs/serve.log in the server's home)"
            job.emit("failed", {"message": job.error})
        finally:
            try:
                # Stopping, a run that did not end is left open (a failure then may be the shutdown's own).
                if not (self._closing and job.status != "done"):
                    self.queue.finish(job.id, job.status, job.error)
            finally:
                with self._lock:
                    lock = self._locks.pop(job.id, None)
                if lock is not None:
                    lock.release()
                job.done.set()

    def _images(self, job: Job) -> None:
        p = job.payload
        n = p["n"]
        row = self.queue.get(job.id)
        if row and row["run_id"] and self.studio.store.get_run(row["run_id"])["status"] == "done":
            # The run ended before the last server died: its images are the answer, nothing is made again.
            job.run_id = row["run_id"]
            job.best = self.studio.best(job.run_id, k=n, fill=True)
            return
        if "request" in p:  # the whole Request, as the CLI over the warm server sends it (make and edit)
            from reverie.types import Request

            request = Request.from_dict(p["request"])
        else:
            request = self.studio.request(p["prompt"], n=n, rounds=p["rounds"], target=p.get("target"),
                                          aspect=p["aspect"], megapixels=p["megapixels"], profile=p["profile"],
                                          seed=p["seed"], references=p.get("references") or ())
        with self.studio.open_run(request) as run:
            self._opened(job, run)
            run.drive(progress=self._progress(job), stop=job.stop)
            job.best = run.best(n, fill=True)

    def _edit(self, job: Job) -> None:
        """An edit run of an image (the web studio's Edit form): Studio.edit's request and run, as
        /v1/images/edits makes them, followed and resumed as an images request is."""
        from reverie.orchestrator.edit import edit_request

        p = job.payload
        row = self.queue.get(job.id)
        if row and row["run_id"] and self.studio.store.get_run(row["run_id"])["status"] == "done":
            job.run_id = row["run_id"]
            job.best = self.studio.best(job.run_id, k=p["n"], fill=True)
            return
        progress = self._progress(job)
        request = edit_request(self.studio, p["source"], p["instruction"], n=p["n"], rounds=p["rounds"],
                               seed=p["seed"], progress=progress)
        with self.studio.open_run(request, progress=progress) as run:
            self._opened(job, run)
            run.drive(progress=progress, stop=job.stop)
            job.best = run.best(p["n"], fill=True)

    def _opened(self, job: Job, run) -> None:
        """The request has its run: a restarted server finds it by the request's row."""
        job.run_id = run.id
        self.queue.started(job.id, run.id)

    def _chat(self, job: Job) -> None:
        p = job.payload
        with self._lock:
            session_lock = self._sessions.setdefault(p["session"], threading.Lock())
        with session_lock:
            turns = self.studio.store.chats.turns(p["session"])
            row = self.queue.get(job.id)
            if row and row["run_id"] and turns and turns[-1]["run_id"] == row["run_id"]:
                # The turn was recorded before the last server died: it is done, not to be made again.
                job.run_id = row["run_id"]
            else:
                controls = {k: p[k] for k in ("steps", "cfg", "negative", "sampler", "seed", "exact", "style") if k in p}
                controls.update(p.get("options") or {})  # `reverie chat` over the warm server: Studio.chat's own options
                # job.stop is set by the stop button and by a shutdown; on a shutdown the turn is not
                # recorded (abandon) and the next start makes it, resuming its run.
                turn = self.studio.chat(p["session"], p["message"], progress=self._progress(job), n=p["n"],
                                        rounds=p["rounds"], megapixels=p.get("megapixels"), stop=job.stop,
                                        abandon=self.shutdown,
                                        on_open=lambda run: self._opened(job, run), **controls)
                job.run_id = turn.run_id
                job.emit("turn", {"turn": turn.turn, "summary": turn.interpretation.summary,
                                  "idea": turn.interpretation.request.idea, "prompt": turn.prompt,
                                  "cancelled": turn.cancelled, "best_ids": [r.id for r in turn.best]})
            job.best = self.studio.best(job.run_id, k=p["n"], fill=True)

    def reproduce(self, render_id: int) -> dict[str, Any]:
        """Render an image again from its stored spec on the warm engine and compare the pixels
        (orchestrator/reproduce.py, as `reverie reproduce` does)."""
        from reverie.orchestrator.reproduce import reproduce
        from reverie.profiles import get_profile
        from reverie.types import RenderSpec

        store = self.studio.store
        row = store.render_row(render_id)
        spec = RenderSpec.from_dict(json.loads(row["spec_json"]))
        engine = self.studio.engine_for(get_profile(spec.profile), lambda e: None)
        if engine.name != row["engine"]:
            raise ReverieError(f"image {render_id} was made by the {row['engine']} engine and this server runs "
                               f"{engine.name}: reproduce it with `reverie reproduce` on that engine")
        shape = row.get("batch_size") or getattr(engine, "batch_size", None) or 1
        compared = reproduce(lambda specs: self.studio.worker.render(engine, list(specs), priority=(-1, spec.profile, 0)),
                             spec, batch_size=shape, original=store.home / row["path"])
        if compared.max_diff is None:
            return {"match": False, "message": compared.message}
        return {"match": compared.match, "max_diff": compared.max_diff, "message": compared.message}

    def begin_stop(self) -> None:
        """The server is stopping (Ctrl-C, SIGTERM): every run stops at its next step or image, and
        its request stays open for the next server. Only sets flags, so a signal handler may call it."""
        self._closing = True
        self.shutdown.set()
        for job in list(self.jobs.values()):
            if not job.done.is_set():
                job.stop.set()

    def close(self, wait: float = 30.0) -> int:
        """Stop the runs between steps and wait up to `wait` seconds for them; their requests stay open
        and the next server finishes them. Returns how many requests are left open."""
        self.begin_stop()
        deadline = time.monotonic() + wait
        for job in list(self.jobs.values()):
            job.done.wait(max(0.0, deadline - time.monotonic()))
        return len(self.queue.open_requests())
