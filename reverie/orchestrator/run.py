"""A run, opened in one place: `Studio.open_run(request) -> Run`.

    request = studio.request("a fox in the rain", n=4, rounds=2)
    with studio.open_run(request) as run:       # found or created, locked, resumed or new
        for event in run.loop():                # the agent loop; its progress events as they come
            print(event.kind)
        best = run.best(4)                      # the run's best, the VLM judge's pick first

`open_run(request, *, run_id=None, progress=None)`:
- without `run_id`, the oldest unfinished run of the same request on the same engine identity
  that no live process holds is continued (a crash, a kill, Ctrl-C), or a new run starts;
- with `run_id` (a batch item knows its run), that run is taken;
- either way the Run holds the run's lock (store/locks.py) until `close()` (or the `with` block
  ends), so another process always sees it `running`, and a run held elsewhere is refused with
  one line naming it when the same seeds would render twice.

Every way in opens its runs here: `make`, each batch idea, each chat turn, each serve request,
and the ways to come (edit, MCP, A1111). `Run.drive(progress=...)` runs the loop on the calling
thread with a progress callback (what a batch's idea threads do); `Run.loop()` yields the same
events from a generator.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from reverie.types import Event, ProgressFn, Render, Request, ReverieError, RunStarted


@dataclass
class MakeResult:
    run_id: str
    best: list[Render]
    renders: list[Render]
    stop_reason: str
    home: Path
    notices: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        def one(r: Render) -> dict:
            return {
                "id": r.id,
                "path": r.path,
                "seed": r.seed,
                "sha256": r.sha256,
                "round": r.round + 1,  # 1-based for people, as `reverie show` prints; the store counts from 0
                "prompt": r.prompt,
                "width": r.spec.width,
                "height": r.spec.height,
                "scores": ({**r.scores.values, "composite": r.scores.composite} if r.scores else None),
            }

        return {
            "run_id": self.run_id,
            "home": str(self.home),
            "stop_reason": self.stop_reason,
            "renders": len(self.renders),
            "best": [one(r) for r in self.best],
            "notices": self.notices,
        }


class Run:
    """One opened run: its id, its request, its first seed, whether it resumed, and its lock.

    Made by `Studio.open_run`, never directly. Closing it releases the lock; how the run ended
    (done, failed, interrupted) is on its row in the store.
    """

    def __init__(self, studio: Any, *, id: str, request: Request, base_seed: int, resumed: bool, lock: Any):
        self.studio = studio
        self.id = id
        self.request = request
        self.base_seed = base_seed
        self.resumed = resumed
        self.lock = lock

    def __repr__(self) -> str:
        return f"Run({self.id!r}, resumed={self.resumed})"

    # -- running ---------------------------------------------------------------------------
    def drive(self, *, progress: Optional[ProgressFn] = None, policy: str = "revise", order: int = 0,
              deadline: Optional[float] = None, deadline_label: str = "", stop: Optional[threading.Event] = None,
              llm_gate: Any = None, on_round_start: Optional[Callable[[int], None]] = None,
              on_round_end: Optional[Callable[[int, bool], None]] = None) -> dict:
        """Run the agent loop to its end on this thread; returns the loop's final state. make,
        each batch idea and each chat turn come here: the same nodes, the same store and
        checkpoints; only the loop policy and the budget differ. The run's row says how it ended.

        Args:
            progress: called with every progress event (reverie.types' typed events).
            policy: between rounds, "revise" (make, chat: the critic rewrites) or "explore" (batch).
            order: the run's place in the engine worker's queue among runs at the same round.
            deadline: a time.monotonic() at which no new round starts (a batch's --hours).
            deadline_label: how to name that deadline when it is reached ("8 h").
            stop: set it to end the run between images (RenderStopped is raised).
            llm_gate: a semaphore bounding LLM calls across the runs of a batch.
            on_round_start: called with the round number when the engine takes a round of this run.
            on_round_end: called with (round, ok) when the engine hands the round back.
        """
        if self.lock is None:
            raise ReverieError(f"run {self.id} is closed: open it again with Studio.open_run to continue it")
        from reverie.orchestrator.graph import LoopContext, build_graph, run_graph
        from reverie.orchestrator.parts import current_run
        from reverie.orchestrator.requests import render_size
        from reverie.profiles import get_profile
        from reverie.store.recovery import rerender_missing, sweep_orphans

        studio, store, req, run_id = self.studio, self.studio.store, self.request, self.id
        progress = progress or (lambda e: None)
        profile = get_profile(req.profile)
        engine = studio.engine_for(profile, progress)
        width, height = render_size(req, profile, engine)
        token = current_run.set(run_id)
        try:
            # After the run exists: the LLM's /models call is recorded against it.
            expander, critic = studio.expander_and_critic(progress, engine)
            progress(RunStarted(run_id=run_id, idea=req.idea, profile=profile.name, engine=engine.name, width=width,
                                height=height, n=req.n, rounds=req.rounds, budget=req.max_renders or req.n * req.rounds))
            ctx = LoopContext(store=store, engine=engine, scorer=studio.scorer(progress), expander=expander,
                              critic=critic, request=req, profile=profile, width=width, height=height,
                              base_seed=self.base_seed, progress=progress, signatures=studio.signatures,
                              clip_embeddings=studio.clip_embeddings,
                              worker=studio.worker, policy=policy, order=order, deadline=deadline,
                              deadline_label=deadline_label, stop=stop, llm_gate=llm_gate,
                              on_round_start=on_round_start, on_round_end=on_round_end,
                              models_dir=studio.home / "models", vlm_judge=studio.vlm_judge(progress),
                              variety_handoff_max=1 if studio.config.get("loop", {}).get("handoff", True) else 0,
                              notice=lambda m: studio.notice(m, progress))
            state = {"run_id": run_id, "round": 0, "seed_cursor": 0,
                     "shift": req.shift if req.shift is not None else profile.shift,
                     "blind_steps": req.blind_steps, "embed_noise": req.embed_noise,
                     "handoff_steps": req.handoff_steps, "history": []}
            if self.resumed:  # a run just made has written no file yet: only a resumed one has strays to adopt
                sweep_orphans(store, run_id)
                redone = rerender_missing(
                    store, run_id,
                    lambda specs: studio.worker.render(engine, specs, progress=progress, priority=(-1, profile.name, order)),
                    batch_size=lambda: getattr(engine, "batch_size", None))
                studio.notice(f"continuing run {run_id} from its last committed step ({len(store.renders(run_id))} "
                              f"renders kept, {len(redone)} missing files rendered again)", progress)
            final = run_graph(build_graph(checkpointer=studio.checkpointer()), state, ctx, run_id,
                              recursion_limit=10 * req.rounds + 20)
        except ReverieError as e:
            store.finish_run(run_id, "failed", str(e))
            raise
        except BaseException:
            store.finish_run(run_id, "interrupted", "stopped before the end; run the same command to continue")
            raise
        finally:
            current_run.reset(token)
        failed = store.failed_reason(run_id)
        if failed is not None:  # not one image: the run failed, and says why
            message = f"no image was rendered: {failed}"
            store.finish_run(run_id, "failed", message)
            raise ReverieError(message)
        return final

    def loop(self, *, policy: str = "revise", stop: Optional[threading.Event] = None) -> Iterator[Event]:
        """The agent loop's events as they come, the run going on a thread of its own; the last
        is "finished". Leaving the loop early stops the run between images; an error the run
        ends with is raised here after the events before it."""
        events: "queue.Queue[Optional[Event]]" = queue.Queue()
        stop = stop or threading.Event()
        box: dict[str, BaseException] = {}

        def work() -> None:
            try:
                self.drive(progress=events.put, policy=policy, stop=stop)
            except BaseException as e:  # handed to the consumer below
                box["error"] = e
            finally:
                events.put(None)

        thread = threading.Thread(target=work, name=f"reverie-run-{self.id}", daemon=True)
        thread.start()
        try:
            while (event := events.get()) is not None:
                yield event
        finally:
            if thread.is_alive():  # the consumer left early: the run stops between images
                stop.set()
            thread.join()
        if "error" in box:
            raise box["error"]

    # -- reading ---------------------------------------------------------------------------
    def best(self, k: int = 4, *, fill: bool = False) -> list[Render]:
        """Up to k of the run's best renders, the judge's pick first (see `Studio.best`)."""
        return self.studio.best(self.id, k=k, fill=fill)

    def result(self, k: int = 4, stop_reason: str = "") -> MakeResult:
        """What `make` returns for this run: its best k, every render, how it ended."""
        return self.studio.result(self.id, k=k, stop_reason=stop_reason)

    # -- closing ---------------------------------------------------------------------------
    def close(self) -> None:
        """Release the run's lock (idempotent): another process may now continue it."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
