"""The agent loop as a LangGraph StateGraph.

    expand -> references -> render -> score -> judge -> (render | expand | finish)

State holds only ids and small numbers, so it checkpoints cleanly; images live in the store.
Every node is idempotent against the store: a resumed run finds what was already committed
(prompts by round, renders by spec hash, scores by render) instead of doing it again.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from reverie.agents.expander import Critic, Expander
from reverie.render.engine import Engine
from reverie.render.profiles import Profile
from reverie.scoring.dedupe import mean_similarity
from reverie.scoring.scorer import Scorer
from reverie.store.db import Store
from reverie.types import Control, EngineOutput, Event, Expansion, ProgressFn, RenderSpec, Request, Scores


class LoopState(TypedDict, total=False):
    run_id: str
    round: int  # 0-based round being worked on
    prompt_id: int
    parent_prompt_id: Optional[int]
    seed_cursor: int  # seeds used so far: seed = base_seed + cursor
    shift: Optional[float]
    blind_steps: int
    round_render_ids: list[int]
    history: list[float]  # best composite of each round
    decision: str  # "render" | "expand" | "finish"
    pending_revision: Optional[dict]
    stop_reason: str
    control: Optional[dict]


@dataclass
class LoopContext:
    store: Store
    engine: Engine
    scorer: Scorer
    expander: Expander
    critic: Critic
    request: Request
    profile: Profile
    width: int
    height: int
    base_seed: int
    progress: ProgressFn
    started: float = field(default_factory=time.monotonic)
    variety_shift_max: float = 7.0
    variety_blind_max: int = 2
    references: Callable[[Request, Store], Optional[Control]] | None = None


def _ctx(runtime: Runtime[LoopContext]) -> LoopContext:
    return runtime.context


def expand(state: LoopState, runtime: Runtime[LoopContext]) -> dict:
    ctx = _ctx(runtime)
    rnd = state.get("round", 0)
    existing = [p for p in ctx.store.prompts(state["run_id"]) if p["round"] == rnd]
    if existing:  # resumed: this round's prompt was already committed
        p = existing[-1]
        return {"prompt_id": p["id"], "pending_revision": None}
    revision = state.get("pending_revision")
    if revision:
        expansion = Expansion(**revision)
        parent = state.get("prompt_id")
    else:
        expansion = ctx.expander.expand(ctx.request.idea, ctx.profile, k=1, seed=ctx.base_seed)[0]
        parent = None
    prompt_id = ctx.store.add_prompt(state["run_id"], expansion, round=rnd, parent_id=parent)
    ctx.progress(Event("expanded", {"round": rnd, "prompt_id": prompt_id, "source": expansion.source,
                                    "prompt": expansion.prompt, "parent_id": parent}))
    return {"prompt_id": prompt_id, "pending_revision": None}


def references(state: LoopState, runtime: Runtime[LoopContext]) -> dict:
    ctx = _ctx(runtime)
    if state.get("control") is not None or ctx.references is None or not ctx.request.references:
        return {}
    control = ctx.references(ctx.request, ctx.store)
    return {"control": control.__dict__ if control else None}


def _specs(state: LoopState, ctx: LoopContext) -> list[RenderSpec]:
    prompt = next(p for p in ctx.store.prompts(state["run_id"]) if p["id"] == state["prompt_id"])
    control = Control(**state["control"]) if state.get("control") else None
    steps = ctx.request.steps or ctx.profile.steps
    cursor = state.get("seed_cursor", 0)
    return [
        RenderSpec(
            prompt=prompt["text"],
            negative=prompt["negative"] if ctx.profile.negative else "",
            seed=ctx.base_seed + cursor + i,
            width=ctx.width,
            height=ctx.height,
            steps=steps,
            guidance=ctx.profile.guidance,
            profile=ctx.profile.name,
            sampler=ctx.profile.sampler,
            shift=state.get("shift"),
            blind_steps=state.get("blind_steps", 0),
            control=control,
        )
        for i in range(ctx.request.n)
    ]


def render(state: LoopState, runtime: Runtime[LoopContext]) -> dict:
    ctx = _ctx(runtime)
    run_id, rnd = state["run_id"], state.get("round", 0)
    specs = _specs(state, ctx)
    ids: list[Optional[int]] = []
    todo: list[tuple[int, RenderSpec]] = []
    for i, spec in enumerate(specs):
        row = ctx.store.find_render(run_id, spec)
        ids.append(row["id"] if row else None)
        if row is None:
            todo.append((i, spec))
    ctx.progress(Event("round_started", {"round": rnd, "n": len(specs), "todo": len(todo)}))
    if todo:
        outputs = render_with_retry(ctx.engine, [s for _, s in todo], ctx.progress)
        for (i, _), output in zip(todo, outputs):
            ids[i] = ctx.store.add_render(run_id, state["prompt_id"], rnd, output,
                                          batch_size=getattr(ctx.engine, "batch_size", None))
            ctx.progress(Event("rendered", {"round": rnd, "render_id": ids[i], "seed": output.spec.seed,
                                            "seconds": output.seconds, "error": output.error}))
    return {"round_render_ids": [i for i in ids if i is not None], "seed_cursor": state.get("seed_cursor", 0) + len(specs)}


def render_with_retry(engine: Engine, specs: list[RenderSpec], progress: ProgressFn) -> list[EngineOutput]:
    """Render; on out-of-memory, halve the engine's batch size and try again, down to one."""
    while True:
        try:
            return engine.render(specs, progress)
        except MemoryError as e:
            size = getattr(engine, "batch_size", None)
            if not size or size <= 1:
                raise
            engine.batch_size = max(1, size // 2)
            progress(Event("notice", {"message": f"engine ran out of memory ({e}); retrying with batch size {engine.batch_size}"}))


def score(state: LoopState, runtime: Runtime[LoopContext]) -> dict:
    ctx = _ctx(runtime)
    renders = [r for r in ctx.store.renders(state["run_id"]) if r.id in set(state.get("round_render_ids", []))]
    todo = [r for r in renders if r.scores is None]
    if todo:
        from PIL import Image

        images = []
        for r in todo:
            with Image.open(r.path) as im:
                images.append(im.convert("RGB"))
        scores = ctx.scorer.score(images, [ctx.request.idea] * len(todo), [r.prompt for r in todo])
        for r, s in zip(todo, scores):
            ctx.store.add_scores(r.id, s)
        ctx.progress(Event("scored", {"round": state.get("round", 0), "count": len(todo), "scorer": ctx.scorer.name,
                                      "best": max(s.composite for s in scores)}))
    return {}


def judge(state: LoopState, runtime: Runtime[LoopContext]) -> dict:
    ctx = _ctx(runtime)
    req = ctx.request
    rnd = state.get("round", 0)
    round_ids = set(state.get("round_render_ids", []))
    renders = [r for r in ctx.store.renders(state["run_id"]) if r.id in round_ids and r.scores is not None]
    round_best = max((r.scores.composite for r in renders), default=0.0)
    history = list(state.get("history", []))
    previous_best = max(history) if history else None
    history.append(round_best)
    overall = max(history)
    update: dict[str, Any] = {"history": history}

    stop = ""
    if req.target is not None and overall >= req.target:
        stop = f"target {req.target} reached ({overall:.3f})"
    elif rnd + 1 >= req.rounds:
        stop = f"round budget reached ({req.rounds})"
    elif req.max_seconds is not None and time.monotonic() - ctx.started >= req.max_seconds:
        stop = f"time budget reached ({req.max_seconds:.0f}s)"
    if stop:
        ctx.progress(Event("judged", {"round": rnd, "best": overall, "decision": "finish", "reason": stop}))
        return {**update, "decision": "finish", "stop_reason": stop}

    embeddings = [r.scores.embedding for r in _with_embeddings(ctx, renders)]
    similarity = mean_similarity([e for e in embeddings if e])
    prompt = next(p for p in ctx.store.prompts(state["run_id"]) if p["id"] == state["prompt_id"])
    expansion = Expansion(prompt=prompt["text"], negative=prompt["negative"], source=prompt["source"])
    details = [{"seed": r.seed, **r.scores.values, "composite": r.scores.composite} for r in renders]
    critique = ctx.critic.critique(req.idea, expansion, ctx.profile, round_best, previous_best, similarity, details)
    update.update({"round": rnd + 1})
    if critique.action == "variety":
        base_shift = state.get("shift") or ctx.profile.shift or 3.0
        update["shift"] = min(ctx.variety_shift_max, base_shift + 2.0) if ctx.profile.shift else state.get("shift")
        update["blind_steps"] = min(ctx.variety_blind_max, state.get("blind_steps", 0) + 1)
        decision = "render"
    elif critique.action == "revise" and critique.expansion is not None:
        update["pending_revision"] = critique.expansion.to_dict()
        decision = "expand"
    else:
        decision = "render"
    update["decision"] = decision
    ctx.progress(Event("judged", {"round": rnd, "best": overall, "decision": critique.action, "reason": critique.reason}))
    return update


def _with_embeddings(ctx: LoopContext, renders: list) -> list:
    # Embeddings are not stored; re-derive them cheaply for this round's renders.
    if all(r.scores.embedding for r in renders):
        return renders
    from PIL import Image

    images = []
    for r in renders:
        with Image.open(r.path) as im:
            images.append(im.convert("RGB"))
    fresh = ctx.scorer.score(images, [ctx.request.idea] * len(renders), [r.prompt for r in renders]) if images else []
    return [type(r)(**{**r.__dict__, "scores": s}) for r, s in zip(renders, fresh)]


def finish(state: LoopState, runtime: Runtime[LoopContext]) -> dict:
    ctx = _ctx(runtime)
    ctx.store.finish_run(state["run_id"], "done", state.get("stop_reason", ""))
    ctx.progress(Event("finished", {"run_id": state["run_id"], "reason": state.get("stop_reason", "")}))
    return {}


def _after_judge(state: LoopState) -> str:
    return state.get("decision", "finish")


def build_graph(checkpointer=None):
    g = StateGraph(LoopState, context_schema=LoopContext)
    g.add_node("expand", expand)
    g.add_node("references", references)
    g.add_node("render", render)
    g.add_node("score", score)
    g.add_node("judge", judge)
    g.add_node("finish", finish)
    g.add_edge(START, "expand")
    g.add_edge("expand", "references")
    g.add_edge("references", "render")
    g.add_edge("render", "score")
    g.add_edge("score", "judge")
    g.add_conditional_edges("judge", _after_judge, {"render": "render", "expand": "expand", "finish": "finish"})
    g.add_edge("finish", END)
    return g.compile(checkpointer=checkpointer)


@contextmanager
def open_checkpointer(home: Path) -> Iterator[Any]:
    """LangGraph checkpoints in home/checkpoints.db, one thread per run id."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    conn = sqlite3.connect(str(Path(home) / "checkpoints.db"), timeout=30, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        yield SqliteSaver(conn)
    finally:
        conn.close()


def run_graph(graph, state: LoopState, ctx: LoopContext, run_id: str, recursion_limit: int) -> dict:
    """Run the loop for one run; with a checkpoint on disk, continue from its last step.

    Checkpoints make a resumed run take the same decisions (an LLM critic's revision is not
    asked again); the store makes every node idempotent for the steps after the checkpoint.
    """
    config = {"configurable": {"thread_id": run_id}, "recursion_limit": recursion_limit}
    snapshot = graph.get_state(config)
    start = None if snapshot.next else state
    return graph.invoke(start, config=config, context=ctx, durability="sync")
