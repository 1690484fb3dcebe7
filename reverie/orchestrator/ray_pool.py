"""Engine workers as Ray actors: one queue on the head, warm engines on every GPU of a cluster.

The head process keeps the one queue of render jobs (lowest round first, as EngineWorker) and
one thread per actor. A free actor takes the next few seeds of the first job waiting (its
engine's batch), renders them where it lives and sends the images back as PNG bytes; the head
alone stores them, so the store keeps its one writer and the lineage is the same as a local
run's, plus which worker made each image. An actor that dies (its process killed, its node
lost) gives the seeds it held back to the queue for the others; Ray restarts it (max_restarts)
and it takes work again, warm after its first batch.

Ray is optional (`pip install 'reverie[ray]'`): nothing here imports it until a pool starts.
"""

from __future__ import annotations

import collections
import heapq
import io
import os
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Optional

from reverie.orchestrator.worker import EngineWorker, RenderJob, RenderStopped, render_with_retry
from reverie.types import EngineOutput, Event, RenderSpec, ReverieError

INSTALL_LINE = "Ray is not installed: pip install 'reverie[ray]'"
MAX_RESTARTS = 3  # Ray brings a dead actor back this many times; after that its seeds go to the others only
PIPELINE = 2  # batches queued on each actor: it starts the next while the head takes in the last
KILLS_TO_GIVE_UP = 2  # seeds in flight at this many actor deaths are not tried again: the job fails, naming them


def check_address(address: str) -> str:
    """The --ray value, checked before anything starts: local, auto, ray://HOST:PORT or HOST:PORT."""
    address = (address or "").strip()
    if address in ("local", "auto") or address.startswith("ray://") or _host_port(address):
        return address
    raise ReverieError(f"--ray {address!r}: use local (a Ray instance of this process), auto (the cluster this "
                       "machine belongs to, else a local one), ray://HOST:10001 (Ray Client) or HOST:6379 (the head)")


def _host_port(address: str) -> bool:
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit()


def check_ray_request(*, address: str, engine: Any, workers: Optional[int]) -> None:
    """Everything about a Ray request that can be refused in one line before Ray starts."""
    check_address(address)
    if workers is not None and workers < 1:
        raise ReverieError(f"--workers must be 1 or more (got {workers})")
    if (engine if isinstance(engine, str) else getattr(engine, "name", "")) == "comfyui":
        raise ReverieError("ComfyUI servers are workers already: pass --comfy-url once per server instead of --ray")
    require_ray()


def require_ray():
    """The ray module, or the one line that says how to get it."""
    try:
        import ray
    except ImportError:
        raise ReverieError(INSTALL_LINE) from None
    return ray


class EngineActor:
    """Lives in a Ray worker process: builds engines by registry name and keeps the last one
    warm, renders a batch of specs and returns the images as PNG bytes."""

    def __init__(self):
        import ray

        ctx = ray.get_runtime_context()
        node, actor = ctx.get_node_id() or "", ctx.get_actor_id() or ""
        self.name = f"ray node {node[:8]} ({ray.util.get_node_ip_address()}) actor {actor[:8]}"
        self._key: Optional[str] = None
        self._engine = None

    def describe(self) -> dict:
        return {"name": self.name, "pid": os.getpid()}

    def render(self, recipe: "EngineRecipe", specs: list[RenderSpec]) -> dict:
        engine = self._engine_for(recipe)
        events: list[Event] = []
        t0 = time.perf_counter()
        outputs = render_with_retry(engine, specs, events.append)
        images = []
        for output in outputs:
            png = None
            if output.image is not None:
                buf = io.BytesIO()
                output.image.save(buf, format="PNG", compress_level=1)  # the head stores it again, with its metadata
                png = buf.getvalue()
            # A ComfyUI engine names its server; a local engine here is this actor.
            worker = output.worker if output.worker not in ("", "local") else self.name
            images.append((png, replace(output, image=None, worker=worker)))
        return {"images": images, "events": events, "seconds": time.perf_counter() - t0,
                "batch_size": getattr(engine, "batch_size", None)}

    def _engine_for(self, recipe: "EngineRecipe"):
        import ray

        from reverie.render.registry import make_engine

        if recipe.key != self._key:  # one model in memory at a time, as the local worker does
            if self._engine is not None:
                self._engine.close()
            self._engine = (ray.get(recipe.instance) if recipe.instance is not None
                            else make_engine(recipe.name, **recipe.options))
            self._key = recipe.key
        return self._engine


@dataclass(frozen=True)
class EngineRecipe:
    """How to build an engine anywhere: its registry name and options, or for an engine object
    handed to the studio, a copy of it in Ray's object store (sent to each actor once)."""

    name: str
    options: dict = field(default_factory=dict)
    instance: Any = None  # a Ray ObjectRef of the engine object

    @property
    def key(self) -> str:
        if self.instance is not None:
            return f"object:{self.instance.hex()}"
        return f"{self.name}:{sorted(self.options.items())!r}"


class _Lane:
    """One actor and what the head knows about it."""

    def __init__(self, handle, name: str, pid: int):
        self.handle, self.name, self.pid = handle, name, pid
        self.batch: dict[str, int] = {}  # recipe key -> the engine's batch size, once it has rendered
        self.deaths = 0


class _Share:
    """A job as the lanes share it: the seeds not handed out yet, those in flight, what came back."""

    def __init__(self, job: RenderJob):
        self.pending: list[RenderSpec] = list(job.specs)
        self.inflight = 0
        self.results: dict[str, EngineOutput] = {}
        self.kills: dict[str, int] = {}  # spec hash -> actor deaths while it was in flight


class RayWorker(EngineWorker):
    """The engine worker over Ray actors: jobs are shared out a batch at a time to whichever
    actor is free, so one round can use every GPU and a batch keeps them all busy."""

    def __init__(self, address: str = "auto", *, workers: Optional[int] = None):
        super().__init__(name="ray")
        ray = require_ray()
        self._ray = ray
        self._owns_ray = False
        if not ray.is_initialized():  # a caller that connected already (tests, notebooks) keeps its instance
            _connect(ray, check_address(address))
            self._owns_ray = True
        _raylet_notes_to_stderr()
        try:
            self._lanes = self._start_actors(workers)
        except BaseException:
            if self._owns_ray:
                ray.shutdown()
            raise
        self._alive = len(self._lanes)
        self._recipes: dict[int, tuple[Any, EngineRecipe]] = {}
        self._shares: dict[RenderJob, _Share] = {}

    # -- setup -----------------------------------------------------------------------------
    def _start_actors(self, workers: Optional[int]) -> list[_Lane]:
        ray = self._ray
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
        if gpus:  # one actor per GPU: each holds its engine on its own device
            count, ask, unit = workers or gpus, {"num_gpus": 1}, "GPU"
            have = gpus
        else:
            count, ask, unit = workers or 1, {"num_cpus": 1}, "CPU"
            have = cpus
        if count > have:
            raise ReverieError(f"--workers {count}: the Ray cluster has {have} {unit}(s) and each worker takes one; "
                               f"pass --workers {have} or fewer, or add nodes (ray start --address)")
        # Ray restarts a dead actor; its in-flight call is not retried there (max_task_retries=0)
        # but handed back here, so the seeds go to whichever actor is free first.
        actor = ray.remote(max_restarts=MAX_RESTARTS, max_task_retries=0, **ask)(EngineActor)
        handles = [actor.remote() for _ in range(count)]
        try:
            described = ray.get([h.describe.remote() for h in handles], timeout=300)
        except ray.exceptions.GetTimeoutError:
            raise ReverieError(f"Ray could not start {count} engine worker(s) in 5 minutes: check `ray status` "
                               "(every node needs reverie installed in the same Python)") from None
        except ray.exceptions.RayActorError as e:
            raise ReverieError(f"a Ray engine worker died as it started ({_first_line(e)}): every node needs "
                               "pip install 'reverie[ray]' in the same Python") from None
        return [_Lane(h, d["name"], d["pid"]) for h, d in zip(handles, described)]

    @property
    def workers(self) -> list[dict]:
        """Each actor's name and the process id it started in (the tests kill one)."""
        return [{"name": lane.name, "pid": lane.pid} for lane in self._lanes]

    def call(self, engine, fn, *, priority: tuple = (-1,)):
        """The engines live in the actors: work on a local engine object runs here, on the caller's thread."""
        return fn()

    def adopt(self, engine, *, name: str, options: dict) -> None:
        with self._cv:  # the engine object is kept with its recipe, so its id is never reused
            self._recipes[id(engine)] = (engine, EngineRecipe(name=name, options=dict(options)))

    def _ship(self, job: RenderJob) -> Optional[tuple[Any, EngineRecipe]]:
        """Called with the lock held for an engine object the studio was handed (not built by
        name): a copy goes to Ray's object store once, and each actor takes it from there."""
        try:
            recipe = EngineRecipe(name=job.engine.name, instance=self._ray.put(job.engine))
        except Exception as e:  # an engine holding threads or sockets cannot be pickled
            heapq.heappop(self._heap)
            self._shares[job].pending.clear()
            job.error = ReverieError(f"engine {job.engine.name} cannot be sent to Ray workers ({_first_line(e)}): "
                                     "pass the engine's name (tiny, diffusers, fixed) instead of an object")
            self._settle(job)
            return None
        self._recipes[id(job.engine)] = (job.engine, recipe)
        return self._recipes[id(job.engine)]

    def _start_threads(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=self._serve, args=(lane,), name=f"reverie-ray-{i}", daemon=True)
                   for i, lane in enumerate(self._lanes)]
        for t in threads:
            t.start()
        return threads

    def close(self) -> None:
        super().close()
        for lane in self._lanes:
            self._ray.kill(lane.handle)
        if self._owns_ray:
            self._ray.shutdown()

    # -- the lanes -------------------------------------------------------------------------
    def _take(self, lane: _Lane, block: bool) -> Optional[tuple[RenderJob, list[RenderSpec], EngineRecipe]]:
        """The next seeds for this lane: a batch of the first job waiting; None once closed, or
        at once when nothing waits and block is False."""
        with self._cv:
            while True:
                if (self._closed or not block) and not self._heap:
                    return None
                if self._heap:
                    job = self._heap[0][2]
                    share = self._shares.setdefault(job, _Share(job))
                    if job.cancelled or job.error is not None or not share.pending:
                        heapq.heappop(self._heap)
                        share.pending.clear()
                        self._settle(job)
                        continue
                    recipe = self._recipes.get(id(job.engine)) or self._ship(job)
                    if recipe is None:  # the engine object could not go to the actors: its job failed
                        continue
                    size = lane.batch.get(recipe[1].key) or getattr(job.engine, "batch_size", None) or 1
                    chunk, share.pending = share.pending[:size], share.pending[size:]
                    if not share.pending:
                        heapq.heappop(self._heap)
                    share.inflight += 1
                    self._running.add(job)
                    return job, chunk, recipe[1]
                self._cv.wait()

    def _serve(self, lane: _Lane) -> None:
        """Keep this lane's actor fed: up to PIPELINE batches queued on it, so it starts the next
        while the head takes in the last one; replies come back in order (an actor renders one
        call at a time)."""
        ray = self._ray
        # job.on_start is not called: it pins a round on the head process in case the engine takes
        # that process down (a batch sets such rounds aside), and here the engine lives in an actor
        # whose death is handled below, so the head dying is never a round's fault.
        queued: collections.deque = collections.deque()
        dying = False  # the actor died: what is still queued on it comes back without counting again
        while True:
            while len(queued) < PIPELINE and (taken := self._take(lane, block=not queued)) is not None:
                job, chunk, recipe = taken
                self.first_start = self.first_start if self.first_start is not None else time.perf_counter()
                queued.append((job, chunk, recipe, lane.handle.render.remote(recipe, chunk)))
            if not queued:
                return  # closed
            job, chunk, recipe, ref = queued.popleft()
            error: Optional[BaseException] = None
            try:
                reply = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as e:
                in_flight = len(chunk) + sum(len(c) for _, c, _, _ in queued)
                if self._lost(lane, job, chunk, e, counted=dying, in_flight=in_flight):
                    for job, chunk, _, _ in queued:  # no more calls to this actor: its queue goes back too
                        self._lost(lane, job, chunk, e, counted=True)
                    return
                dying = bool(queued)
                continue
            except ray.exceptions.RayTaskError as e:  # the engine's own error, as the engine raised it
                error = e.cause if isinstance(e.cause, BaseException) else e
            except BaseException as e:  # the job fails with it, as it would locally
                error = e
            else:
                dying = False
                lane.batch[recipe.key] = reply["batch_size"] or lane.batch.get(recipe.key)
                self.last_end = time.perf_counter()
                with self._cv:  # the actors' mean: busy_fraction stays the share of time an engine works
                    self.busy_seconds += reply["seconds"] / len(self._lanes)
                error = self._deliver(job, reply)
            with self._cv:
                share = self._shares[job]
                share.inflight -= 1
                job.error = job.error or error
                self._settle(job)

    def _deliver(self, job: RenderJob, reply: dict) -> Optional[BaseException]:
        from PIL import Image

        share = self._shares[job]
        for event in reply["events"]:
            job.events.put(event)
        for png, meta in reply["images"]:
            image = Image.open(io.BytesIO(png)) if png is not None else None
            if image is not None:
                image.load()
            output = replace(meta, image=image)
            with self._cv:
                share.results[output.spec.sha] = output
            if job.on_output is not None:
                try:
                    job.on_output(output)
                except BaseException as e:  # the caller could not take it: its job ends with that error
                    return e
        return None

    def _lost(self, lane: _Lane, job: RenderJob, chunk: list[RenderSpec], error: BaseException,
              counted: bool = False, in_flight: int = 0) -> bool:
        """An actor died with seeds in flight: they go back to the front of their job for any
        lane; True when this lane is gone for good (Ray will not restart it again). `counted`:
        the same death already counted and told (a second batch that was queued on the actor)."""
        lane.deaths += 0 if counted else 1
        reason = type(error).__name__  # Ray's own text is a paragraph; its log has it
        with self._cv:
            share = self._shares[job]
            share.inflight -= 1
            for spec in chunk if not counted else ():  # a batch queued behind the one rendering is not to blame
                share.kills[spec.sha] = share.kills.get(spec.sha, 0) + 1
            poison = [s for s in chunk if share.kills.get(s.sha, 0) >= KILLS_TO_GIVE_UP]
            gone = lane.deaths > MAX_RESTARTS
            if gone and not counted:
                self._alive -= 1
            if poison:
                seeds = ", ".join(str(s.seed) for s in poison)
                job.error = job.error or ReverieError(
                    f"seed(s) {seeds} were rendering on {KILLS_TO_GIVE_UP} Ray workers that died: not tried again; "
                    "everything finished is saved")
            elif not self._alive:
                job.error = job.error or ReverieError(f"every Ray worker died (the last: {lane.name}: {reason}); "
                                                      "everything finished is saved: run the same command to continue")
            else:
                was_waiting = bool(share.pending)
                share.pending = list(chunk) + share.pending
                if not was_waiting and not job.cancelled:
                    heapq.heappush(self._heap, (job.priority, job.seq, job))
                self._cv.notify_all()
            self._settle(job)
            if not self._alive:  # nothing will serve the queue: every waiting job fails now
                self._fail_waiting()
        if not counted:
            then = "Ray restarts it" if not gone else "it is not restarted again"
            job.events.put(Event("notice", {"message": f"Ray worker {lane.name} died ({reason}); its "
                                                       f"{in_flight or len(chunk)} image(s) in flight go to the "
                                                       f"other workers, {then}"}))
        return gone

    def submit(self, engine, specs, **kw) -> RenderJob:
        job = super().submit(engine, specs, **kw)
        with self._cv:
            if not self._alive:
                self._fail_waiting()
        return job

    def _fail_waiting(self) -> None:
        """Called with the lock held once no actor is left: every waiting job fails now."""
        while self._heap:
            _, _, job = heapq.heappop(self._heap)
            share = self._shares.setdefault(job, _Share(job))
            share.pending.clear()
            job.error = job.error or ReverieError("every Ray worker died: everything finished is saved; "
                                                  "run the same command to continue")
            self._settle(job)
        self._cv.notify_all()

    def _settle(self, job: RenderJob) -> None:
        """Called with the lock held: end the job once nothing of it is waiting or in flight."""
        share = self._shares.get(job)
        if share is None or share.inflight or (share.pending and job.error is None and not job.cancelled):
            return
        del self._shares[job]
        self._running.discard(job)
        if job.error is None and job.cancelled:
            job.error = RenderStopped()
        if job.error is None:
            missing = [s for s in job.specs if s.sha not in share.results]
            if missing:
                job.error = ReverieError(f"Ray workers handed back {len(job.specs) - len(missing)} of "
                                         f"{len(job.specs)} images")
            else:
                job.outputs = [share.results[s.sha] for s in job.specs]
        # on_end runs on a lane's thread with the lock held: it is the caller's bookkeeping
        # (a row update), quick, and never takes this lock.
        if job.on_end is not None:
            try:
                job.on_end(job.error is None)
            except BaseException as e:
                job.error = job.error or e
        job.done.set()


def _connect(ray, address: str) -> None:
    # Ray's own logs go to its session folder; the console keeps reverie's lines.
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": False}
    try:
        if address == "local":
            ray.init(address="local", **kwargs)
        elif address == "auto":
            ray.init(**kwargs)  # RAY_ADDRESS, else the cluster this machine is part of, else a new local one
        elif address.startswith("ray://"):
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ReverieError(f"could not reach Ray at {address} ({_first_line(e)}): start the head with "
                           "`ray start --head` or pass --ray local") from None


def _raylet_notes_to_stderr() -> None:
    """Ray's driver prints the raylet's notes (a worker process that died) on stdout, where they
    would break `--json`; they go to stderr, beside the notice that names the dead worker."""
    try:
        from ray._private import worker as ray_worker
    except ImportError:  # another Ray layout: its notes stay where Ray puts them
        return
    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None or getattr(original, "reverie_stderr", False):
        return

    def print_to_stdstream(data, *args, **kwargs):
        if data.get("pid") == "raylet":
            data = {**data, "is_err": True}
        return original(data, *args, **kwargs)

    print_to_stdstream.reverie_stderr = True
    ray_worker.print_to_stdstream = print_to_stdstream


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
