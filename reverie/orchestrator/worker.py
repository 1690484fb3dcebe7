"""The engine worker: one queue of render jobs from every run, served by lanes.

make, every idea of a batch, every chat turn and serve request hand their rounds to the same
worker. A lane is one place that renders: this process's engine (LocalLane), one ComfyUI server
(ComfyLane), or one Ray actor (ray_pool.RayLane). Each lane has its own thread and takes seeds
from the queue as it frees up; the runs expand, store and score on their own threads meanwhile,
so no lane waits for them. Jobs are served lowest (round, profile, order) first: round 0 of
every run before round 1 of any, grouped by profile so a mixed batch switches models rarely.

A job's seeds can be split between lanes: a local lane takes the whole job, a ComfyUI lane one
seed at a time (keeping a couple queued on its server, from any run), a Ray lane its engine's
batch. A lane that loses its seeds (a server gone, an actor killed) hands them back to the
queue for the others.
"""

from __future__ import annotations

import bisect
import itertools
import os
import queue
import threading
import time
from typing import Any, Callable, Optional, Sequence

from reverie.types import (Engine, EngineImage, EngineOutput, Event, Notice, ProgressFn, RenderSpec, ReverieError,
                           no_progress)

WAKE_S = 0.25  # how often a waiting lane looks again for cancelled jobs to settle


class RenderStopped(Exception):
    """A job (or the run that asked for it) was cancelled: the engine stops between images."""


class RenderJob:
    def __init__(self, engine, specs: Sequence[RenderSpec], on_output: Optional[Callable[[EngineOutput], None]],
                 priority: tuple, stop: Optional[threading.Event], on_start: Optional[Callable[[], None]] = None,
                 on_end: Optional[Callable[[bool], None]] = None, events: Optional["queue.Queue[Event]"] = None):
        self.engine, self.specs, self.on_output, self.priority = engine, list(specs), on_output, priority
        # on_start is called on a local lane's thread just before the engine starts on it (a
        # remote lane never calls it: the engine lives elsewhere, so it cannot take this process
        # down); on_end once it has ended (True when it rendered), before a local lane takes the
        # next job, so a crash in the next job is never pinned on this one.
        self.on_start, self.on_end = on_start, on_end
        self.stop = stop  # the run's own stop flag (a batch stopping), besides cancel()
        # Engine progress (and the caller's own, when it shares the queue), emitted on the waiting thread.
        self.events: "queue.Queue[Event]" = events if events is not None else queue.Queue()
        self.done = threading.Event()
        self.seq = 0  # its place in the queue among jobs of the same priority
        self.outputs: Optional[list[EngineOutput]] = None
        self.error: Optional[BaseException] = None
        self._cancelled = threading.Event()
        self.fn: Optional[Callable[[], Any]] = None  # a call to run on the engine's thread instead of specs
        # How the lanes share it, kept by the worker under its lock.
        self.pending: list[RenderSpec] = list(self.specs)  # not handed to a lane yet
        self.inflight = 0  # chunks a lane holds
        self.results: dict[str, EngineOutput] = {}  # spec hash -> output
        self.lanes: Optional[set[str]] = None  # the lanes that may serve it (None: every lane that serves its engine)
        self.gone: dict[str, str] = {}  # lane key -> why it lost this job's seeds: not asked again for this job
        self.all_gone: Optional[Callable[["RenderJob"], BaseException]] = None  # the error once no lane is left
        self.settled = False
        self.fn_taken = False
        self._worker: Optional["EngineWorker"] = None

    def cancel(self) -> None:
        self._cancelled.set()
        if self._worker is not None:
            self._worker.settle(self)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set() or (self.stop is not None and self.stop.is_set())

    @property
    def waiting(self) -> bool:
        """Something of it is not handed to a lane yet."""
        return bool(self.pending) or (self.fn is not None and not self.fn_taken)

    @property
    def abandoned(self) -> bool:
        """Cancelled, failed or ended: a lane holding its seeds drops them."""
        return self.settled or self.cancelled or self.error is not None

    def check(self, event: Event) -> None:
        """The engine's progress callback: queue the event, or stop the engine between images."""
        if self.cancelled:
            raise RenderStopped()
        self.events.put(event)


class Lane:
    """One place that renders, with its own thread taking work from the worker's queue."""

    key = "lane"
    name = "lane"
    alive = True  # False once it will never take work again (a Ray actor past its restarts)

    def __init__(self):
        self.busy_seconds = 0.0  # seconds its engine spent rendering
        self.first_start: Optional[float] = None
        self.last_end: Optional[float] = None
        self._thread: Optional[threading.Thread] = None

    def serves(self, job: RenderJob) -> bool:
        raise NotImplementedError

    def serve(self, worker: "EngineWorker") -> None:
        """The lane's thread: take work until the worker closes."""
        raise NotImplementedError

    def start(self, worker: "EngineWorker") -> None:
        self._thread = threading.Thread(target=self.serve, args=(worker,), name=f"reverie-lane-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """The worker is closing and every job is cancelled: let go of what the lane waits on."""

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def adopt(self, engine, *, name: str, options: dict) -> None:
        """Told how the studio built an engine; a lane that renders elsewhere builds it there."""

    def describe(self) -> dict:
        return {"name": self.name, "pid": os.getpid()}

    def busy(self, t0: float, t1: float) -> None:
        self.first_start = t0 if self.first_start is None else self.first_start
        self.last_end = t1
        self.busy_seconds += t1 - t0


class EngineWorker:
    """The queue of render jobs and the lanes that serve it (composed: a pool is a list of lanes)."""

    def __init__(self, name: str = "local", *, lanes: Sequence[Lane] = (), local: bool = True,
                 on_close: Optional[Callable[[], None]] = None, all_gone: str = ""):
        """`lanes`: lanes that serve from the start (Ray actors); `local`: a local lane is added
        for engines no lane serves, and runs `call`s; ComfyUI lanes are added per server as an
        engine of that pool first renders. `on_close` runs after every lane has stopped."""
        self.name = name
        self._cv = threading.Condition()
        self._queue: list[tuple[tuple, int, RenderJob]] = []  # waiting jobs, sorted by (priority, seq)
        self._jobs: set[RenderJob] = set()  # every job not ended yet
        self._seq = itertools.count()
        self._closed = False
        self._lanes: list[Lane] = []
        self._local = local
        self._on_close = on_close
        self._all_gone = all_gone or ("no engine worker is left: everything finished is saved; "
                                      "run the same command to continue")
        for lane in lanes:
            self._add_lane(lane)

    # -- the callers' side -----------------------------------------------------------------
    def submit(self, engine, specs: Sequence[RenderSpec], *, on_output=None, priority: tuple = (0,),
               stop: Optional[threading.Event] = None, on_start: Optional[Callable[[], None]] = None,
               on_end: Optional[Callable[[bool], None]] = None, events=None) -> RenderJob:
        job = RenderJob(engine, specs, on_output, priority, stop, on_start, on_end, events)
        from reverie.render.comfyui import ComfyUIEngine

        if isinstance(engine, ComfyUIEngine) and job.specs:
            self._pool_lanes(job)
        return self._enqueue(job)

    def _enqueue(self, job: RenderJob) -> RenderJob:
        with self._cv:
            if self._closed:
                raise ReverieError("the engine worker is closed: open a new Studio")
            if not any(lane.serves(job) for lane in self._lanes):
                if not self._local:
                    raise ReverieError(f"no lane of the {self.name} worker renders engine {job.engine.name}")
                self._add_lane(LocalLane())
            job.seq = next(self._seq)
            job._worker = self
            self._jobs.add(job)
            bisect.insort(self._queue, (job.priority, job.seq, job), key=lambda item: item[:2])
            self._check_lanes_left(job)
            self._cv.notify_all()
        self.settle(job)  # one with no lane left failed at once
        return job

    def _pool_lanes(self, job: RenderJob) -> None:
        """A ComfyUI job: every workflow is checked against each server before anything is
        queued (a one-line error when none can render it), and each usable server gets a lane."""
        engine = job.engine
        usable, gone = engine.preflight(job.specs, job.events.put)
        job.lanes = {info.url for info in usable}
        job.gone.update(gone)
        job.all_gone = lambda job: engine.all_gone_error(job.gone, len(job.results), len(job.specs))
        with self._cv:
            have = {lane.key for lane in self._lanes}
            for info in usable:
                if info.url not in have:
                    self._add_lane(ComfyLane(engine, info))

    def _add_lane(self, lane: Lane) -> None:
        self._lanes.append(lane)
        lane.start(self)

    def call(self, engine, fn: Callable[[], Any], *, priority: tuple = (-1,)) -> Any:
        """Run `fn` on the engine's thread, between two renders, and return what it returns: work
        on the engine's own weights (the dreamer on its text encoder) takes turns with rendering
        instead of racing it (offload hooks move those weights) or a model switch unloading them.
        A worker with no local lane (Ray: the engines live in the actors) runs it here."""
        if not self._local:
            return fn()
        job = RenderJob(engine, [], None, priority, None)
        job.fn = fn
        self._enqueue(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.outputs

    def adopt(self, engine, *, name: str, options: dict) -> None:
        """Told how the studio built an engine (its registry name and options): lanes that
        render elsewhere build the same engine there."""
        for lane in list(self._lanes):
            lane.adopt(engine, name=name, options=options)

    def render(self, engine, specs: Sequence[RenderSpec], *, progress: ProgressFn = no_progress, on_output=None,
               priority: tuple = (0,), stop: Optional[threading.Event] = None,
               on_start: Optional[Callable[[], None]] = None,
               on_end: Optional[Callable[[bool], None]] = None, events=None) -> list[EngineOutput]:
        """Render on the worker and wait; engine events reach `progress` on this thread, and so do
        the caller's own when it passes the queue it posts them to as `events`.

        Interrupted here (Ctrl-C, a progress callback raising), the job is cancelled and this
        waits until the lanes have let go of it, so everything they handed to on_output is delivered.
        """
        job = self.submit(engine, specs, on_output=on_output, priority=priority, stop=stop, on_start=on_start,
                          on_end=on_end, events=events)
        try:
            while not job.done.wait(0.05):
                _drain(job, progress)
                if job.cancelled:  # a run's stop flag: the job ends as soon as no lane holds its seeds
                    self.settle(job)
            _drain(job, progress)
        except BaseException:
            job.cancel()
            job.done.wait()
            raise
        if job.error is not None:
            raise job.error
        return job.outputs or []

    def close(self) -> None:
        """Cancel every job and wait for the lanes: a process that exits while a thread is inside
        torch aborts instead of printing its one error line."""
        with self._cv:
            self._closed = True
            jobs = list(self._jobs)
            for job in jobs:
                job._cancelled.set()
            self._cv.notify_all()
        for job in jobs:
            self.settle(job)
        for lane in list(self._lanes):
            lane.stop()
        deadline = time.monotonic() + 120
        for lane in list(self._lanes):
            lane.join(max(0.1, deadline - time.monotonic()))
        if self._on_close is not None:
            self._on_close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def lanes(self) -> list[Lane]:
        return list(self._lanes)

    @property
    def workers(self) -> list[dict]:
        """Each lane's name and the process it renders in (the Ray tests kill one)."""
        return [lane.describe() for lane in self._lanes]

    # Busy accounting for the batch summary and the benchmarks: the lanes' mean.
    @property
    def busy_seconds(self) -> float:
        lanes = [lane for lane in self._lanes if lane.first_start is not None]
        return sum(lane.busy_seconds for lane in lanes) / max(1, len(lanes))

    @property
    def first_start(self) -> Optional[float]:
        starts = [lane.first_start for lane in self._lanes if lane.first_start is not None]
        return min(starts) if starts else None

    @property
    def last_end(self) -> Optional[float]:
        ends = [lane.last_end for lane in self._lanes if lane.last_end is not None]
        return max(ends) if ends else None

    @property
    def busy_fraction(self) -> float:
        first, last = self.first_start, self.last_end
        if first is None or last is None or last <= first:
            return 0.0
        return self.busy_seconds / (last - first)

    # -- the lanes' side -------------------------------------------------------------------
    def take(self, lane: Lane, size: Callable[[RenderJob], int], *, block: bool = True,
             ) -> Optional[tuple[RenderJob, list[RenderSpec]]]:
        """The next seeds for `lane`: up to size(job) of the first waiting job it may serve.
        None once the worker closes, or at once when there is none and block is False."""
        while True:
            ended: list[RenderJob] = []
            with self._cv:
                taken = self._take(lane, size, ended)
                if taken is None and block and not self._closed and not ended:
                    self._cv.wait(WAKE_S)
            for job in ended:
                self.settle(job)
            if taken is not None or not block or self._closed:
                return taken

    def wait_for_work(self) -> bool:
        """Block a little while for a job to come or end (a lane with nothing to do); False once closed."""
        with self._cv:
            if not self._closed:
                self._cv.wait(WAKE_S)
            return not self._closed

    def _take(self, lane: Lane, size, ended: list) -> Optional[tuple[RenderJob, list[RenderSpec]]]:
        for item in list(self._queue):
            job = item[2]
            if job.abandoned or not job.waiting:
                self._queue.remove(item)
                ended.append(job)
                continue
            if not lane.serves(job) or lane.key in job.gone or (job.lanes is not None and lane.key not in job.lanes):
                continue
            if job.fn is not None:
                job.fn_taken = True
                self._queue.remove(item)
                job.inflight += 1
                return job, []
            try:
                count = max(1, int(size(job)))
            except Exception as e:  # the lane cannot take this job's engine at all (Ray: it cannot be sent)
                job.error = job.error or e
                self._queue.remove(item)
                ended.append(job)
                continue
            chunk, job.pending = job.pending[:count], job.pending[count:]
            if not job.pending:
                self._queue.remove(item)
            job.inflight += 1
            return job, chunk
        return None

    def deliver(self, job: RenderJob, output: EngineOutput) -> None:
        """A lane hands on one output; raises what the job's on_output raised (the caller could
        not take it: the lane fails the job with it)."""
        with self._cv:
            if output.spec.sha in job.results or job.settled:
                return  # a seed handed back that another lane also finished, or a job already ended
            job.results[output.spec.sha] = output
        if job.on_output is not None:
            job.on_output(output)

    def finished(self, job: RenderJob, error: Optional[BaseException] = None) -> None:
        """A lane let go of one chunk it took (rendered, failed with `error`, or dropped)."""
        with self._cv:
            job.inflight -= 1
            if error is not None and job.error is None:
                job.error = error
            self._cv.notify_all()
        self.settle(job)

    def give_back(self, job: RenderJob, specs: Sequence[RenderSpec], *, lane: Optional[Lane] = None,
                  why: str = "") -> None:
        """A lane lost a chunk it took: its unfinished seeds go back to the front of the job, for
        the other lanes. With `why`, the lane is not asked again for this job."""
        with self._cv:
            job.inflight -= 1
            if lane is not None and why:
                job.gone[lane.key] = why
            back = [s for s in specs if s.sha not in job.results]
            if back and not job.abandoned:
                was_waiting = bool(job.pending)
                job.pending = back + job.pending
                if not was_waiting:
                    bisect.insort(self._queue, (job.priority, job.seq, job), key=lambda item: item[:2])
            self._check_lanes_left(job)
            self._cv.notify_all()
        self.settle(job)

    def lane_lost(self, lane: Lane, why: str) -> None:
        """A lane went away for every job it could take now (a server that stopped answering):
        it is asked again only for jobs that come later. Jobs left with no lane fail."""
        with self._cv:
            for job in list(self._jobs):
                if lane.serves(job):
                    job.gone.setdefault(lane.key, why)
                    self._check_lanes_left(job)
            self._cv.notify_all()
        for job in list(self._jobs):
            self.settle(job)

    def fail(self, job: RenderJob, error: BaseException) -> None:
        with self._cv:
            job.error = job.error or error
            self._cv.notify_all()
        self.settle(job)

    def _check_lanes_left(self, job: RenderJob) -> None:
        """Called with the lock held: a job with seeds waiting that no lane can take fails."""
        if not job.waiting or job.abandoned:
            return
        if any(lane.alive and lane.serves(job) and lane.key not in job.gone
               and (job.lanes is None or lane.key in job.lanes) for lane in self._lanes):
            return
        job.error = job.all_gone(job) if job.all_gone is not None else ReverieError(self._all_gone)

    def settle(self, job: RenderJob) -> None:
        """End the job once nothing of it is waiting or in flight: its outputs or its error, then
        on_end, then done."""
        with self._cv:
            if job.settled or job.inflight or (job.waiting and not job.abandoned):
                return
            job.settled = True
            self._jobs.discard(job)
            self._queue = [item for item in self._queue if item[2] is not job]
            missing = [s for s in job.specs if s.sha not in job.results]
            if job.error is None and job.cancelled and (missing or job.fn is not None and job.outputs is None):
                job.error = RenderStopped()
            if job.error is None and job.fn is None:
                if missing:
                    job.error = ReverieError(f"the engine workers handed back {len(job.specs) - len(missing)} of "
                                             f"{len(job.specs)} images")
                else:
                    job.outputs = [job.results[s.sha] for s in job.specs]
        if job.on_end is not None:
            try:
                job.on_end(job.error is None)
            except BaseException as e:  # the caller's bookkeeping failed: its job fails with it
                job.error = job.error or e
        job.done.set()


class LocalLane(Lane):
    """This process's engine, one job at a time: the whole job, on one thread."""

    key = name = "local"

    def __init__(self):
        super().__init__()
        self._current = None  # the engine that rendered last

    def serves(self, job: RenderJob) -> bool:
        from reverie.render.comfyui import ComfyUIEngine

        return job.fn is not None or not isinstance(job.engine, ComfyUIEngine)

    def serve(self, worker: EngineWorker) -> None:
        while (taken := worker.take(self, lambda job: len(job.pending))) is not None:
            job, chunk = taken
            error: Optional[BaseException] = None
            try:
                if job.cancelled:
                    raise RenderStopped()
                self._switch_to(job.engine)
                if job.on_start is not None:
                    job.on_start()
                t0 = time.perf_counter()
                try:
                    if job.fn is not None:
                        job.outputs = job.fn()
                    else:
                        render_with_retry(job.engine, chunk, job.check,
                                          on_output=lambda output, job=job: worker.deliver(job, output))
                finally:
                    self.busy(t0, time.perf_counter())
            except BaseException as e:  # handed to the waiting caller
                error = e
            worker.finished(job, error)  # on_end runs here, before the next job starts

    def _switch_to(self, engine) -> None:
        # A diffusers engine holds its weights on the device and loads them again on its next
        # render: unload the last one before another model renders, so two never share memory.
        previous, self._current = self._current, engine
        if previous is not None and previous is not engine and getattr(previous, "pipe", None) is not None:
            previous.close()


class ComfyLane(Lane):
    """One ComfyUI server: it keeps a couple of prompts queued there, seeds of any run, and takes
    one more as each finishes, so the server never waits between rounds or ideas."""

    def __init__(self, engine, info):
        super().__init__()
        self.url = self.key = info.url  # lanes are keyed by where they render
        self.name = info.worker
        self.worker_name = info.worker
        self.engine = engine  # its timeouts; each job's own engine builds that job's workflows
        self.down: Optional[str] = None  # why it stopped answering, until it answers again

    def serves(self, job: RenderJob) -> bool:
        from reverie.render.comfyui import ComfyUIEngine

        return job.fn is None and isinstance(job.engine, ComfyUIEngine) and self.url in job.engine.servers

    def serve(self, worker: EngineWorker) -> None:
        from reverie.render.comfyui import ComfyClient, serve_server

        engine = self.engine
        while not worker.closed:
            client = ComfyClient(self.url, engine.timeout)
            client.worker = self.worker_name
            feed = _LaneFeed(worker, self)
            try:
                serve_server(client, feed, depth=engine.lane_depth, poll_interval=engine.poll_interval,
                             stall_timeout=engine.stall_timeout)
            except BaseException as e:  # a bug in the loop: the jobs it held failed with it; try again shortly
                feed.crashed(e)
                time.sleep(WAKE_S)


class _LaneFeed:
    """What a ComfyUI server loop takes work from: the worker's queue, seed by seed."""

    def __init__(self, worker: EngineWorker, lane: ComfyLane):
        self.worker, self.lane = worker, lane
        self.held: dict[int, Any] = {}  # tickets this loop holds, for crashed()

    def running(self) -> bool:
        return not self.worker.closed

    def take(self):
        from reverie.render.comfyui import Ticket

        taken = self.worker.take(self.lane, lambda job: 1, block=False)
        if taken is None:
            return None
        job, (spec,) = taken
        ticket = Ticket(spec, job.engine, job)
        self.held[id(ticket)] = ticket
        return ticket

    def wait(self) -> bool:
        return self.worker.wait_for_work()

    def abandoned(self, ticket) -> bool:
        return ticket.owner.abandoned

    def finish(self, ticket, output: EngineOutput, url: str) -> None:
        job = ticket.owner
        self.held.pop(id(ticket), None)
        self.lane.down = None
        self.lane.busy(time.perf_counter() - output.seconds, time.perf_counter())
        error = None
        try:
            self.worker.deliver(job, output)
        except BaseException as e:  # the caller could not take it: its job ends with that error
            error = e
        job.events.put(EngineImage(seed=output.spec.seed, seconds=output.seconds, server=url, error=output.error))
        self.worker.finished(job, error)

    def event(self, ticket, event: Event) -> None:
        ticket.owner.events.put(event)

    def fail(self, ticket, error: BaseException) -> None:
        self.held.pop(id(ticket), None)
        self.worker.finished(ticket.owner, error)

    def release(self, ticket) -> None:
        self.held.pop(id(ticket), None)
        self.worker.finished(ticket.owner)

    def lost(self, url: str, reason: str, tickets) -> None:
        """The server stopped answering: its seeds go back to the others, and it is asked again
        only for jobs that come later."""
        lane, worker = self.lane, self.worker
        told = lane.down is not None
        lane.down = reason
        for ticket in tickets:
            self.held.pop(id(ticket), None)
            job = ticket.owner
            worker.give_back(job, [ticket.spec], lane=lane, why=reason)
            if not told and not job.abandoned:
                told = True
                job.events.put(Notice(message=f"ComfyUI at {lane.url} is gone ({reason}); "
                                              f"its renders move to the other servers"))
        worker.lane_lost(lane, reason)

    def crashed(self, error: BaseException) -> None:
        for ticket in list(self.held.values()):
            self.fail(ticket, error)


def _drain(job: RenderJob, progress: ProgressFn) -> None:
    while True:
        try:
            event = job.events.get_nowait()
        except queue.Empty:
            return
        progress(event)


def render_with_retry(engine: Engine, specs: list[RenderSpec], progress: ProgressFn,
                      on_output: Optional[Callable[[EngineOutput], None]] = None) -> list[EngineOutput]:
    """Render, handing each output to on_output as it arrives; return them all in spec order.

    On out-of-memory, halve the engine's batch size and render what is not done yet, down to
    one seed per batch.
    """
    done: dict[str, EngineOutput] = {}
    refused: list[BaseException] = []

    def deliver(output: EngineOutput) -> None:
        done[output.spec.sha] = output
        if on_output is not None:
            try:
                on_output(output)
            except BaseException as e:
                refused.append(e)  # the caller's own error is never retried as the engine's
                raise

    while True:
        try:
            engine.render([s for s in specs if s.sha not in done], progress, on_output=deliver)
            break
        except MemoryError as e:
            size = getattr(engine, "batch_size", None)
            if refused or not size or size <= 1:
                raise
            engine.batch_size = max(1, size // 2)
            progress(Notice(message=f"engine ran out of memory ({e}); retrying with batch size {engine.batch_size}"))
    missing = [s for s in specs if s.sha not in done]
    if missing:
        raise ReverieError(f"engine {engine.name} handed on {len(specs) - len(missing)} of {len(specs)} outputs: "
                           f"its render() must call on_output once per spec")
    return [done[s.sha] for s in specs]
