"""The engine worker: the one owner of the warm engine, taking render jobs from many runs.

make, every idea of a batch and every chat turn hand their rounds to the same worker. One
thread renders; the runs expand, store and score on their own threads meanwhile, so the engine
is never waiting for them. Jobs are served lowest (round, profile, order) first: round 0 of
every run before round 1 of any, grouped by profile so a mixed batch switches models rarely.
This is the seam where several workers (a ComfyUI pool, Ray actors) can serve one queue.
"""

from __future__ import annotations

import heapq
import itertools
import queue
import threading
import time
from typing import Any, Callable, Optional, Sequence

from reverie.types import Engine, EngineOutput, Event, ProgressFn, RenderSpec, ReverieError, no_progress


class RenderStopped(Exception):
    """A job (or the run that asked for it) was cancelled: the engine stops between images."""


class RenderJob:
    def __init__(self, engine, specs: Sequence[RenderSpec], on_output: Optional[Callable[[EngineOutput], None]],
                 priority: tuple, stop: Optional[threading.Event], on_start: Optional[Callable[[], None]] = None,
                 on_end: Optional[Callable[[bool], None]] = None, events: Optional["queue.Queue[Event]"] = None):
        self.engine, self.specs, self.on_output, self.priority = engine, list(specs), on_output, priority
        # Called on the worker thread just before the engine starts on it, and right after it
        # ends (True when it rendered): before the next job can start, so a crash in the next
        # job is never pinned on this one.
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

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set() or (self.stop is not None and self.stop.is_set())

    def check(self, event: Event) -> None:
        """The engine's progress callback: queue the event, or stop the engine between images."""
        if self.cancelled:
            raise RenderStopped()
        self.events.put(event)


class EngineWorker:
    """Renders jobs on this process's one engine thread; RayWorker (ray_pool.py) is the same
    queue served by engine actors elsewhere."""

    def __init__(self, name: str = "local"):
        self.name = name
        self._heap: list[tuple[tuple, int, RenderJob]] = []
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._current = None  # the engine that rendered last
        self._running: set[RenderJob] = set()
        # Busy accounting for the benchmarks: seconds inside engine.render, and the span.
        self.busy_seconds = 0.0
        self.first_start: Optional[float] = None
        self.last_end: Optional[float] = None

    # -- the callers' side -----------------------------------------------------------------
    def submit(self, engine, specs: Sequence[RenderSpec], *, on_output=None, priority: tuple = (0,),
               stop: Optional[threading.Event] = None, on_start: Optional[Callable[[], None]] = None,
               on_end: Optional[Callable[[bool], None]] = None, events=None) -> RenderJob:
        return self._enqueue(RenderJob(engine, specs, on_output, priority, stop, on_start, on_end, events))

    def _enqueue(self, job: RenderJob) -> RenderJob:
        with self._cv:
            if self._closed:
                raise ReverieError("the engine worker is closed: open a new Studio")
            job.seq = next(self._seq)
            heapq.heappush(self._heap, (job.priority, job.seq, job))
            if not self._threads:
                self._threads = self._start_threads()
            self._cv.notify_all()
        return job

    def call(self, engine, fn: Callable[[], Any], *, priority: tuple = (-1,)) -> Any:
        """Run `fn` on the engine's thread, between two renders, and return what it returns: work
        on the engine's own weights (the dreamer on its text encoder) takes turns with rendering
        instead of racing it (offload hooks move those weights) or a model switch unloading them."""
        job = RenderJob(engine, [], None, priority, None)
        job.fn = fn
        self._enqueue(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.outputs

    def adopt(self, engine, *, name: str, options: dict) -> None:
        """Told how the studio built an engine (its registry name and options). This worker
        renders the object itself; one that renders elsewhere builds the same engine there."""

    def _start_threads(self) -> list[threading.Thread]:
        thread = threading.Thread(target=self._work, name=f"reverie-engine-{self.name}", daemon=True)
        thread.start()
        return [thread]

    def render(self, engine, specs: Sequence[RenderSpec], *, progress: ProgressFn = no_progress, on_output=None,
               priority: tuple = (0,), stop: Optional[threading.Event] = None,
               on_start: Optional[Callable[[], None]] = None,
               on_end: Optional[Callable[[bool], None]] = None, events=None) -> list[EngineOutput]:
        """Render on the worker and wait; engine events reach `progress` on this thread, and so do
        the caller's own when it passes the queue it posts them to as `events`.

        Interrupted here (Ctrl-C, a progress callback raising), the job is cancelled and this
        waits until the engine has stopped, so everything it handed to on_output is delivered.
        """
        job = self.submit(engine, specs, on_output=on_output, priority=priority, stop=stop, on_start=on_start,
                          on_end=on_end, events=events)
        try:
            while not job.done.wait(0.05):
                _drain(job, progress)
            _drain(job, progress)
        except BaseException:
            job.cancel()
            job.done.wait()
            raise
        if job.error is not None:
            raise job.error
        return job.outputs or []

    def close(self) -> None:
        """Stop the thread and wait for it: a process that exits while a thread is inside torch
        aborts instead of printing its one error line."""
        with self._cv:
            self._closed = True
            for _, _, job in self._heap:
                job.cancel()
            for job in self._running:
                job.cancel()
            self._cv.notify_all()
        for thread in self._threads:
            thread.join(120)

    @property
    def busy_fraction(self) -> float:
        if self.first_start is None or self.last_end is None or self.last_end <= self.first_start:
            return 0.0
        return self.busy_seconds / (self.last_end - self.first_start)

    # -- the worker's side -----------------------------------------------------------------
    def _next(self) -> Optional[RenderJob]:
        with self._cv:
            while not self._heap and not self._closed:
                self._cv.wait()
            if not self._heap:
                return None
            _, _, job = heapq.heappop(self._heap)
            self._running.add(job)
            return job

    def _work(self) -> None:
        while (job := self._next()) is not None:
            try:
                if job.cancelled:
                    raise RenderStopped()
                self._switch_to(job.engine)
                if job.on_start is not None:
                    job.on_start()
                t0 = time.perf_counter()
                self.first_start = self.first_start if self.first_start is not None else t0
                try:
                    job.outputs = (job.fn() if job.fn is not None
                                   else render_with_retry(job.engine, job.specs, job.check, on_output=job.on_output))
                finally:
                    self.last_end = time.perf_counter()
                    self.busy_seconds += self.last_end - t0
            except BaseException as e:  # handed to the waiting caller
                job.error = e
            finally:
                if job.on_end is not None:
                    try:
                        job.on_end(job.error is None)
                    except BaseException as e:  # the caller's bookkeeping failed: its job fails with it
                        job.error = job.error or e
                with self._cv:
                    self._running.discard(job)
                job.done.set()

    def _switch_to(self, engine) -> None:
        # A diffusers engine holds its weights on the device and loads them again on its next
        # render: unload the last one before another model renders, so two never share memory.
        previous, self._current = self._current, engine
        if previous is not None and previous is not engine and getattr(previous, "pipe", None) is not None:
            previous.close()


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
            progress(Event("notice", {"message": f"engine ran out of memory ({e}); retrying with batch size {engine.batch_size}"}))
    missing = [s for s in specs if s.sha not in done]
    if missing:
        raise ReverieError(f"engine {engine.name} handed on {len(specs) - len(missing)} of {len(specs)} outputs: "
                           f"its render() must call on_output once per spec")
    return [done[s.sha] for s in specs]
