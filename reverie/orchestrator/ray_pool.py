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
import io
import os
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Optional

from reverie.orchestrator.worker import WAKE_S, EngineWorker, Lane, RenderJob, render_with_retry
from reverie.types import EngineOutput, Event, Notice, RenderSpec, ReverieError

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


class RayLane(Lane):
    """One actor: it takes its engine's batch of the first waiting job, keeps up to PIPELINE
    batches queued on the actor, and hands the images back to the job."""

    def __init__(self, pool: "RayPool", handle, name: str, pid: int):
        super().__init__()
        self.pool, self.handle, self.name, self.pid = pool, handle, name, pid
        self.key = f"ray {name}"
        self.batch: dict[str, int] = {}  # recipe key -> the engine's batch size, once it has rendered
        self.deaths = 0

    def describe(self) -> dict:
        return {"name": self.name, "pid": self.pid}

    def serves(self, job: RenderJob) -> bool:
        return job.fn is None  # a call on a local engine object runs on the caller's thread (EngineWorker.call)

    def adopt(self, engine, *, name: str, options: dict) -> None:
        self.pool.adopt(engine, name=name, options=options)

    def stop(self) -> None:
        """The worker is closing: the actor goes now, so a render it holds is not waited for."""
        try:
            self.pool.ray.kill(self.handle, no_restart=True)
        except Exception:  # already gone, or Ray shut down under us: nothing left to stop
            pass

    def _size(self, job: RenderJob) -> int:
        recipe = self.pool.recipe(job.engine)
        return self.batch.get(recipe.key) or getattr(job.engine, "batch_size", None) or 1

    def serve(self, worker: EngineWorker) -> None:
        """Keep this actor fed: up to PIPELINE batches queued on it, so it starts the next while
        the head takes in the last one; replies come back in order (an actor renders one call at
        a time). job.on_start is not called: it pins a round on the head process in case the
        engine takes that process down, and here the engine lives in an actor whose death is
        handled below, so the head dying is never a round's fault."""
        ray = self.pool.ray
        queued: collections.deque = collections.deque()
        dying = False  # the actor died: what is still queued on it comes back without counting again
        while True:
            while (len(queued) < PIPELINE and not worker.closed
                   and (taken := worker.take(self, self._size, block=not queued)) is not None):
                job, chunk = taken
                recipe = self.pool.recipe(job.engine)
                self.first_start = self.first_start if self.first_start is not None else time.perf_counter()
                queued.append((job, chunk, recipe, self.handle.render.remote(recipe, chunk)))
            if not queued:
                return  # closed
            job, chunk, recipe, ref = queued.popleft()
            if not self._wait(ref, job, worker):
                # Its job was cancelled (Ctrl-C, a stopping batch) while the actor renders it: the
                # run is not kept waiting for a batch it no longer wants (its seeds are rendered
                # again on resume); a call still queued on the actor is dropped there.
                _cancel_quietly(ray, ref)
                worker.finished(job)
                continue
            error: Optional[BaseException] = None
            try:
                reply = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as e:
                if worker.closed:  # stopped by close(): its seeds are not anyone's any more
                    worker.finished(job)
                    for job, _, _, _ in queued:
                        worker.finished(job)
                    return
                in_flight = len(chunk) + sum(len(c) for _, c, _, _ in queued)
                if self._lost(worker, job, chunk, e, counted=dying, in_flight=in_flight):
                    for job, chunk, _, _ in queued:  # no more calls to this actor: its queue goes back too
                        self._lost(worker, job, chunk, e, counted=True)
                    return
                dying = bool(queued)
                continue
            except ray.exceptions.RayTaskError as e:  # the engine's own error, as the engine raised it
                error = e.cause if isinstance(e.cause, BaseException) else e
            except BaseException as e:  # the job fails with it, as it would locally
                error = e
            else:
                dying = False
                self.batch[recipe.key] = reply["batch_size"] or self.batch.get(recipe.key)
                end = time.perf_counter()
                self.busy(end - reply["seconds"], end)
                error = self._deliver(worker, job, reply)
            worker.finished(job, error)

    def _wait(self, ref, job: RenderJob, worker: EngineWorker) -> bool:
        """Wait for the actor's reply; False when the job is abandoned first (the worker closing
        kills the actor instead, so its reply comes at once, as an error)."""
        while not job.abandoned or worker.closed:
            ready, _ = self.pool.ray.wait([ref], timeout=WAKE_S)
            if ready:
                return True
        return False

    @staticmethod
    def _deliver(worker: EngineWorker, job: RenderJob, reply: dict) -> Optional[BaseException]:
        from PIL import Image

        for event in reply["events"]:
            job.events.put(event)
        for png, meta in reply["images"]:
            image = Image.open(io.BytesIO(png)) if png is not None else None
            if image is not None:
                image.load()
            try:
                worker.deliver(job, replace(meta, image=image))
            except BaseException as e:  # the caller could not take it: its job ends with that error
                return e
        return None

    def _lost(self, worker: EngineWorker, job: RenderJob, chunk: list[RenderSpec], error: BaseException,
              counted: bool = False, in_flight: int = 0) -> bool:
        """The actor died with seeds in flight: they go back to the front of their job for any
        lane; True when this lane is gone for good (Ray will not restart it again). `counted`:
        the same death already counted and told (a second batch that was queued on the actor)."""
        self.deaths += 0 if counted else 1
        reason = type(error).__name__  # Ray's own text is a paragraph; its log has it
        poison = [] if counted else self.pool.blame(job, chunk)  # a batch queued behind the one rendering is not to blame
        gone = self.deaths > MAX_RESTARTS
        if gone and not counted:
            self.alive = False
        if poison:
            seeds = ", ".join(str(s.seed) for s in poison)
            worker.finished(job, ReverieError(f"seed(s) {seeds} were rendering on {KILLS_TO_GIVE_UP} Ray workers that "
                                          "died: not tried again; everything finished is saved"))
        else:
            worker.give_back(job, chunk)
        if gone and not counted:
            worker.lane_lost(self, reason)  # every job no live actor can take fails now
        if not counted:
            then = "Ray restarts it" if not gone else "it is not restarted again"
            job.events.put(Notice(message=f"Ray worker {self.name} died ({reason}); its {in_flight or len(chunk)} "
                                          f"image(s) in flight go to the other workers, {then}"))
        return gone


class RayPool:
    """What the actors share: the Ray module, the engines' recipes, and how often each seed was
    in flight on an actor that died."""

    def __init__(self, ray, owns_ray: bool):
        self.ray, self.owns_ray = ray, owns_ray
        self._lock = threading.Lock()
        self._recipes: dict[int, tuple[Any, EngineRecipe]] = {}
        self._kills: dict[str, int] = {}  # spec hash -> actor deaths while it was in flight

    def adopt(self, engine, *, name: str, options: dict) -> None:
        with self._lock:  # the engine object is kept with its recipe, so its id is never reused
            self._recipes[id(engine)] = (engine, EngineRecipe(name=name, options=dict(options)))

    def recipe(self, engine) -> EngineRecipe:
        """How the actors build `engine`: its registry recipe, or for an engine object the
        studio was handed (not built by name), a copy in Ray's object store, sent once."""
        with self._lock:
            if id(engine) not in self._recipes:
                try:
                    recipe = EngineRecipe(name=engine.name, instance=self.ray.put(engine))
                except Exception as e:  # an engine holding threads or sockets cannot be pickled
                    raise ReverieError(f"engine {engine.name} cannot be sent to Ray workers ({_first_line(e)}): "
                                       "pass the engine's name (tiny, diffusers, fixed) instead of an object") from None
                self._recipes[id(engine)] = (engine, recipe)
            return self._recipes[id(engine)][1]

    def blame(self, job: RenderJob, chunk: list[RenderSpec]) -> list[RenderSpec]:
        """Count one actor death against each seed of `chunk`; those at KILLS_TO_GIVE_UP."""
        with self._lock:
            for spec in chunk:
                self._kills[spec.sha] = self._kills.get(spec.sha, 0) + 1
            return [s for s in chunk if self._kills[s.sha] >= KILLS_TO_GIVE_UP]


def ray_worker(address: str = "auto", *, workers: Optional[int] = None) -> EngineWorker:
    """The engine worker over Ray actors: one lane per actor, so one round can use every GPU and
    a batch keeps them all busy. Closing it stops the actors and, when this process started
    Ray, Ray itself, within seconds."""
    ray = require_ray()
    owns = False
    if not ray.is_initialized():  # a caller that connected already (tests, notebooks) keeps its instance
        _connect(ray, check_address(address))
        owns = True
    _raylet_notes_to_stderr()
    _terminate_like_ctrl_c()
    pool = RayPool(ray, owns)
    try:
        lanes = [RayLane(pool, h, name, pid) for h, name, pid in _start_actors(ray, workers)]
    except BaseException:
        if owns:
            _shutdown(ray)
        raise

    return EngineWorker("ray", lanes=lanes, local=False, on_close=(lambda: _shutdown(ray)) if owns else None,
                        all_gone="every Ray worker died: everything finished is saved; run the same command to continue")


def _start_actors(ray, workers: Optional[int]) -> list[tuple[Any, str, int]]:
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
    return [(h, d["name"], d["pid"]) for h, d in zip(handles, described)]


def _cancel_quietly(ray, ref) -> None:
    try:
        ray.cancel(ref)
    except Exception:  # already done, or an actor call Ray cannot cancel: its reply is dropped
        pass


def _shutdown(ray) -> None:
    ray.shutdown()


def _terminate_like_ctrl_c() -> None:
    """SIGTERM stops a Ray batch as Ctrl-C does: the runs stop between images, are marked
    interrupted and the actors go, within seconds. Ray's driver catches SIGTERM in C++ (printing
    a stack dump and aborting, the runs left `running`); a Python handler set after ray.init
    takes its place. A second SIGTERM while that stop is under way is ignored."""
    if threading.current_thread() is not threading.main_thread():
        return  # signals only reach the main thread; a caller there keeps its own

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


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
