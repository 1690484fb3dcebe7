"""The agent loop as a LangGraph StateGraph.

    expand -> references -> render -> score -> judge -> (render | expand | finish)

State holds only ids and small numbers, so it checkpoints cleanly; images live in the store.
Every node is idempotent against the store: a resumed run finds what was already committed
(prompts by round, renders by spec hash, scores by render) instead of doing it again.
"""

from __future__ import annotations

import math
import queue
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from reverie.agents.expander import Critic, Expander
from reverie.orchestrator import noise_search, policy
from reverie.orchestrator.curation import image_signature
from reverie.orchestrator.edit import repair_possible, repair_step, with_edit_scores
from reverie.orchestrator.requests import spec_controls, styled
from reverie.orchestrator.worker import EngineWorker, RenderStopped
from reverie.profiles import Profile
from reverie.scoring.dedupe import mean_similarity
from reverie.scoring.scorer import Scorer
from reverie.store.db import Store
from reverie.types import (
    Control,
    ControlPrepared,
    Engine,
    EngineOutput,
    Event,
    Expanded,
    Expansion,
    Finished,
    Judged,
    Notice,
    Previewed,
    ProgressFn,
    Rendered,
    RenderSpec,
    Repair,
    Request,
    ReverieError,
    RoundStarted,
    Scored,
    Scores,
    Source,
    VlmJudged,
)


class LoopState(TypedDict, total=False):
    run_id: str
    round: int  # 0-based round being worked on
    prompt_id: int
    parent_prompt_id: Optional[int]
    seed_cursor: int  # seeds used so far: seed = base_seed + cursor
    shift: Optional[float]
    blind_steps: int
    embed_noise: float  # noise on the text embeddings (RenderSpec.embed_noise), 0 until diversity is low
    handoff_steps: int  # first steps on the base model (RenderSpec.handoff_steps), 0 until diversity is low
    # Cheap previews of noise candidates so far, in renders (each counts preview_steps / steps):
    # the render budget counts them, though they are never stored as renders.
    preview_spent: float
    round_render_ids: list[int]
    history: list[float]  # best composite of each round
    decision: str  # one of policy's decisions: render | revise | explore | variety | finish
    pending_revision: Optional[dict]
    stop_reason: str
    control: Optional[dict]
    source: Optional[dict]  # an edit's source (types.Source); absent: the request's own source, if any
    noise_dist: Optional[dict]  # --search noise: the distribution this round's components are drawn from


@dataclass(frozen=True)  # read-only: a node changes the run through its state and the store, never here
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
    worker: EngineWorker
    policy: str = "revise"
    order: int = 0  # this run's place among runs sharing the worker (a batch idea's index)
    deadline: Optional[float] = None  # time.monotonic() at which a shared time budget ends
    deadline_label: str = ""
    stop: Optional[threading.Event] = None  # set when the caller (a batch) is stopping
    llm_gate: Any = None  # a semaphore bounding LLM calls across concurrent runs
    # Told when the engine starts on a round of this run and when the round is back (a batch
    # pins a process crash on the round that was in the engine).
    on_round_start: Optional[Callable[[int], None]] = None
    on_round_end: Optional[Callable[[int, bool], None]] = None
    started: float = field(default_factory=time.monotonic)
    variety_shift_max: float = 7.0
    variety_blind_max: int = 2
    # Most first steps the loop hands to the base model (the paper hands one); 0: the loop never
    # turns this knob, which loads a second transformer.
    variety_handoff_max: int = 1
    models_dir: Optional[Path] = None  # where reference preprocessors' weights live (the home's models/)
    signatures: Optional[dict[int, tuple]] = None  # render id -> pixel signature, filled as renders are stored
    clip_embeddings: Optional[dict[int, tuple]] = None  # render id -> CLIP image embedding, where CLIP scores
    embeddings: dict[int, tuple] = field(default_factory=dict)  # render id -> the scorer's embedding, this process
    vlm_judge: Any = None  # a VLMJudge: compares the top candidates for the revision and the final pick
    notice: Any = None  # the studio's once-per-session notice (a dead server is said once, not every round)


def _ctx(runtime: Runtime[LoopContext]) -> LoopContext:
    return runtime.context


def expand(state: LoopState, runtime: Runtime[LoopContext]) -> dict:
    ctx = _ctx(runtime)
    rnd = state.get("round", 0)
    p = ctx.store.round_prompt(state["run_id"], rnd)
    if p is not None:  # resumed: this round's prompt was already committed
        return {"prompt_id": p["id"], "pending_revision": None}
    _check_stop(ctx)
    revision = state.get("pending_revision")
    if revision:
        expansion = Expansion(**revision)
        parent = state.get("prompt_id")
    elif ctx.request.source is not None:  # an edit: the instruction, not a dreamer's reading
        from reverie.orchestrator.edit import edit_expansion

        expansion, parent = edit_expansion(ctx.request, ctx.store, ctx.profile), None
    elif ctx.request.exact:  # the person's words, verbatim, every round
        expansion = Expansion(prompt=ctx.request.idea, negative=ctx.request.negative or "", source="user")
        parent = None
    elif rnd == 0 and ctx.request.revises and (follow_up := revised_follow_up(ctx.request)) is not None:
        expansion, parent = follow_up, None
    else:
        # Round 0, or a fresh interpretation (the explore policy): the seed makes each round's
        # reading different and a resumed run's the same.
        with _gate(ctx):
            expansion = ctx.expander.expand(ctx.request.idea, ctx.profile, k=1, seed=ctx.base_seed + rnd)[0]
        parent = None
    if ctx.request.style and not ctx.request.exact:  # once: a revised or rewritten prompt that has it keeps it
        text, negative = styled(expansion.prompt, expansion.negative, ctx.request.style)
        expansion = Expansion(**{**expansion.to_dict(), "prompt": text, "negative": negative})
    prompt_id = ctx.store.add_prompt(state["run_id"], expansion, round=rnd, parent_id=parent)
    ctx.progress(Expanded(round=rnd, prompt_id=prompt_id, source=expansion.source, prompt=expansion.prompt,
                          parent_id=parent))
    return {"prompt_id": prompt_id, "pending_revision": None}


def revised_follow_up(req: Request) -> Optional[Expansion]:
    """A chat follow-up's first prompt: the last turn's, revised by rules to say the new idea (None: the
    last prompt does not hold its idea where rules can swap it; the expander reads the idea afresh)."""
    from reverie.agents.reword import revise_prompt

    old_idea, old_prompt, old_negative = req.revises
    text = revise_prompt(old_prompt, old_idea, req.idea)
    if text is None:
        return None
    return Expansion(prompt=text, negative=old_negative, source="critic",
                     reason="chat follow-up: the last turn's prompt, revised to keep its look")


def _gate(ctx: LoopContext):
    from contextlib import nullcontext

    return ctx.llm_gate if ctx.llm_gate is not None else nullcontext()


def _check_stop(ctx: LoopContext) -> None:
    """A stopping caller (a batch on Ctrl-C or an engine error) ends this run between steps."""
    if ctx.stop is not None and ctx.stop.is_set():
        raise RenderStopped()


def references(state: LoopState, runtime: Runtime[LoopContext]) -> dict:
    ctx = _ctx(runtime)
    if state.get("control") is not None or ctx.models_dir is None or not ctx.request.references:
        return {}
    control = prepare_reference(ctx, state["run_id"])
    return {"control": control.__dict__}


def prepare_reference(ctx: LoopContext, run_id: str) -> Control:
    """Preprocess the request's first reference (edges, depth, pose, or the image itself), store
    the control image and link it to the run."""
    from reverie.agents.references import prepare_control

    ref = ctx.request.references[0]
    prepared = prepare_control(ref, ctx.request.idea, ctx.models_dir)
    if prepared.note:
        ctx.notice(prepared.note) if ctx.notice else ctx.progress(Notice(message=prepared.note))
    sha, path = ctx.store.add_control(run_id, prepared.kind, str(Path(ref.path).expanduser().resolve()),
                                      prepared.source_sha, prepared.data)
    ctx.progress(ControlPrepared(control_kind=prepared.kind, image_sha=sha, path=str(path)))
    return Control(kind=prepared.kind, image_sha=sha, image_path=str(path), strength=ref.strength)


def _specs(state: LoopState, ctx: LoopContext) -> list[RenderSpec]:
    prompt = ctx.store.prompt(state["prompt_id"])
    control = Control(**state["control"]) if state.get("control") else None
    source = Source.from_dict(state["source"]) if "source" in state else ctx.request.source
    steps = ctx.request.steps or ctx.profile.steps
    cursor = state.get("seed_cursor", 0)
    n = ctx.request.n
    if ctx.request.max_renders is not None:  # the last round renders only what the budget has left
        n = max(0, min(n, ctx.request.max_renders - spent(state)))
    seeds = [ctx.base_seed + cursor + i for i in range(n)]
    # A repair round starts from an image, not from noise: nothing to search there.
    searching = ctx.request.search == "noise" and source is None
    components = noise_search.draw(_noise_dist(state, ctx), seeds) if searching else [()] * n
    return [
        RenderSpec(
            prompt=prompt["text"],
            negative=prompt["negative"] if ctx.profile.negative else "",
            seed=seeds[i],
            width=ctx.width,
            height=ctx.height,
            steps=steps,
            guidance=ctx.profile.guidance,
            profile=ctx.profile.name,
            sampler=ctx.profile.sampler,
            shift=state.get("shift"),
            blind_steps=state.get("blind_steps", 0),
            control=control,
            embed_noise=state.get("embed_noise", 0.0),
            handoff_steps=state.get("handoff_steps", 0) if source is None else 0,
            source=source,
            noise_lowfreq=components[i],
            model_files=tuple(sorted((getattr(ctx.engine, "user_files", None) or {}).items())),
        ).with_(**spec_controls(ctx.request, ctx.profile))
        for i in range(n)
    ]


def _noise_dist(state: LoopState, ctx: LoopContext) -> noise_search.NoiseDist:
    """This round's distribution over noise components: the prior until a round has been refitted."""
    if state.get("noise_dist"):
        return noise_search.NoiseDist(**{k: tuple(v) for k, v in state["noise_dist"].items()})
    return noise_search.NoiseDist.prior(noise_search.dims(ctx.engine.noise_channels))


def spent(state: LoopState) -> int:
    """Renders the budget has paid for: the full ones, and the previews by their step share (rounded up)."""
    return state.get("seed_cursor", 0) + math.ceil(round(state.get("preview_spent", 0.0), 6))


def _previewed(state: LoopState, ctx: LoopContext, specs: list[RenderSpec]) -> tuple[list[RenderSpec], float]:
    """Each spec with the noise candidate its cheap preview scored best, and what the previews cost.

    Previews are not renders: no PNG, no row, no lineage; they are the same spec at fewer steps,
    so the kept spec reproduces from its PNG like any other. The Event "previewed" says how many
    ran and what they cost; the render budget counts that cost (noise_search.preview_cost)."""
    req = ctx.request
    if not (req.search == "noise" and req.preview_steps and specs and specs[0].source is None):
        return specs, 0.0
    dist = _noise_dist(state, ctx)
    pool = [(i, spec.with_(noise_lowfreq=c))
            for i, spec in enumerate(specs) for c in noise_search.candidates(dist, spec.seed, noise_search.PREVIEW_CANDIDATES)]
    previews = ctx.worker.render(ctx.engine, [s.with_(steps=req.preview_steps) for _, s in pool], progress=ctx.progress,
                                 priority=(state.get("round", 0), ctx.profile.name, ctx.order), stop=ctx.stop)
    by_sha = {o.spec.sha: o for o in previews}
    shown = [by_sha.get(s.with_(steps=req.preview_steps).sha) for _, s in pool]
    ok = [o is not None and o.image is not None and not o.error for o in shown]
    images = [o.image.convert("RGB") for o, good in zip(shown, ok) if good]
    scored = iter(ctx.scorer.score(images, [req.idea] * len(images), [s.prompt for (_, s), good in zip(pool, ok) if good])
                  if images else [])
    composites = [next(scored).composite if good else float("-inf") for good in ok]
    chosen = []
    for i, spec in enumerate(specs):
        mine = [(c, s) for (j, s), c in zip(pool, composites) if j == i]
        chosen.append(mine[noise_search.pick([c for c, _ in mine])][1])
    cost = noise_search.preview_cost(len(pool), req.preview_steps, specs[0].steps)
    ctx.progress(Previewed(round=state.get("round", 0), previews=len(pool), steps=req.preview_steps,
                           cost_in_renders=round(cost, 4), best=max(composites) if composites else None))
    return chosen, cost


def render(state: LoopState, runtime: Runtime[LoopContext]) -> dict:
    ctx = _ctx(runtime)
    run_id, rnd = state["run_id"], state.get("round", 0)
    specs, preview_cost = _previewed(state, ctx, _specs(state, ctx))
    ids: list[Optional[int]] = []
    todo: list[tuple[int, RenderSpec]] = []
    for i, spec in enumerate(specs):
        row = ctx.store.find_render(run_id, spec)
        ids.append(row["id"] if row else None)
        if row is None:
            todo.append((i, spec))
    _check_stop(ctx)
    ctx.progress(RoundStarted(round=rnd, n=len(specs), todo=len(todo)))
    if todo:
        sink = RenderSink(ctx, run_id, state["prompt_id"], rnd)
        try:
            ctx.worker.render(ctx.engine, [s for _, s in todo], progress=ctx.progress, on_output=sink.put, events=sink.events,
                              priority=(rnd, ctx.profile.name, ctx.order), stop=ctx.stop,
                              on_start=(lambda: ctx.on_round_start(rnd)) if ctx.on_round_start else None,
                              on_end=(lambda ok: ctx.on_round_end(rnd, ok)) if ctx.on_round_end else None)
        except BaseException:
            sink.close(raise_error=False)  # what the engine handed on is stored before its error goes up
            raise
        sink.close()
        for i, spec in todo:
            ids[i] = sink.ids[spec.sha]
    update = {"round_render_ids": [i for i in ids if i is not None], "seed_cursor": state.get("seed_cursor", 0) + len(specs)}
    if preview_cost:
        update["preview_spent"] = round(state.get("preview_spent", 0.0) + preview_cost, 6)
    return update


class RenderSink:
    """Stores and scores a round's outputs on one worker thread while the engine renders on.

    The engine hands each output to put() as it finishes; the worker writes its PNG and row,
    then scores everything that has arrived meanwhile in one micro-batch. put() runs on the
    engine worker's thread; progress events go to `events`, which the node's thread drains
    while it waits for the engine (the same queue the engine's own events go to) and once more
    in close(), so progress callbacks run on the node's thread and need no locks. The sink's
    first error stops it and is raised from the next put() or from close().
    """

    def __init__(self, ctx: LoopContext, run_id: str, prompt_id: int, rnd: int):
        self.ctx, self.run_id, self.prompt_id, self.round = ctx, run_id, prompt_id, rnd
        self.ids: dict[str, int] = {}  # spec hash -> render id; read after close()
        self.best: Optional[float] = None
        self._inbox: "queue.Queue[Optional[EngineOutput]]" = queue.Queue()
        self.events: "queue.Queue[Event]" = queue.Queue()
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._work, name="reverie-render-sink", daemon=True)
        self._thread.start()

    def put(self, output: EngineOutput) -> None:
        self._raise()
        self._inbox.put(output)

    def close(self, raise_error: bool = True) -> None:
        """Wait until everything put is stored and scored."""
        self._inbox.put(None)
        self._thread.join()
        self._emit()
        if raise_error:
            self._raise()
        elif self._error is not None:
            self.ctx.progress(Notice(message=f"could not store every render: {self._error}"))

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _emit(self) -> None:
        while True:
            try:
                self.ctx.progress(self.events.get_nowait())
            except queue.Empty:
                return

    def _work(self) -> None:
        try:
            while True:
                arrived = [self._inbox.get()]
                while not self._inbox.empty():
                    arrived.append(self._inbox.get_nowait())
                self._store_and_score([o for o in arrived if o is not None])
                if any(o is None for o in arrived):
                    return
        except BaseException as e:  # handed to the node's thread by put() / close()
            self._error = e

    def _store_and_score(self, outputs: list[EngineOutput]) -> None:
        ctx, store = self.ctx, self.ctx.store
        fresh = []
        for output in outputs:
            rid = store.add_render(self.run_id, self.prompt_id, self.round, output,
                                   batch_size=getattr(ctx.engine, "batch_size", None))
            self.ids[output.spec.sha] = rid
            self.events.put(Rendered(round=self.round, render_id=rid, seed=output.spec.seed, seconds=output.seconds,
                                     error=output.error))
            if store.render_row(rid)["status"] == "ok":  # failed and blank images are never scored
                fresh.append((rid, output))
                if ctx.signatures is not None:
                    ctx.signatures[rid] = image_signature(output.image)
        if not fresh:
            return
        images = [o.image.convert("RGB") for _, o in fresh]
        scores = ctx.scorer.score(images, [ctx.request.idea] * len(fresh), [o.spec.prompt for _, o in fresh])
        scores = with_edit_scores(ctx, [o.spec for _, o in fresh], images, scores)
        for (rid, _), s in zip(fresh, scores):
            store.add_scores(rid, s)
            if s.embedding:
                ctx.embeddings[rid] = s.embedding
                if ctx.clip_embeddings is not None and s.scorer.startswith("clip"):
                    ctx.clip_embeddings[rid] = s.embedding
        self.best = max([s.composite for s in scores] + ([self.best] if self.best is not None else []))
        self.events.put(Scored(round=self.round, count=len(fresh), scorer=ctx.scorer.name, best=self.best))


def _score_files(ctx: LoopContext, renders: list) -> list[Scores]:
    """Score stored renders from their PNG files (what the sink scored from memory, a resume
    scores from disk)."""
    from PIL import Image

    images = []
    for r in renders:
        with Image.open(r.path) as im:
            images.append(im.convert("RGB"))
    scores = ctx.scorer.score(images, [ctx.request.idea] * len(renders), [r.prompt for r in renders])
    return with_edit_scores(ctx, [r.spec for r in renders], images, scores)


def score(state: LoopState, runtime: Runtime[LoopContext]) -> dict:
    ctx = _ctx(runtime)
    todo = [r for r in ctx.store.renders_by_ids(state.get("round_render_ids", [])) if r.scores is None]
    if todo:
        scores = _score_files(ctx, todo)
        for r, s in zip(todo, scores):
            ctx.store.add_scores(r.id, s)
        ctx.progress(Scored(round=state.get("round", 0), count=len(todo), scorer=ctx.scorer.name,
                            best=max(s.composite for s in scores)))
    return {}


def judge(state: LoopState, runtime: Runtime[LoopContext]) -> dict:
    ctx = _ctx(runtime)
    _check_stop(ctx)
    req = ctx.request
    rnd = state.get("round", 0)
    # This round's renders by id: a round's work does not grow with the run.
    renders = [r for r in ctx.store.renders_by_ids(state.get("round_render_ids", [])) if r.scores is not None]
    round_best = max((r.scores.composite for r in renders), default=0.0)
    history = list(state.get("history", []))
    previous_best = max(history) if history else None
    history.append(round_best)
    overall = max(history)
    update: dict[str, Any] = {"history": history}

    budget = policy.Budget(rounds=req.rounds, target=req.target, max_seconds=req.max_seconds,
                           max_renders=req.max_renders,
                           deadline_passed=ctx.deadline is not None and time.monotonic() >= ctx.deadline,
                           deadline_label=ctx.deadline_label, early_stop=policy.early_stop_for(ctx.policy))
    cursor = spent(state)  # full renders and the previews' share
    next_renders = req.n if req.max_renders is None else max(0, min(req.n, req.max_renders - cursor))
    stop = policy.stop_reason(budget, finished_round=rnd, history=history, elapsed=time.monotonic() - ctx.started,
                              renders=cursor, next_renders=next_renders,
                              # every composite of the run, read only where early stopping asks for them
                              scores=ctx.store.composites(state["run_id"]) if budget.early_stop else ())
    if stop:
        verdict = _ask_vlm(ctx, state["run_id"], final=True)
        if verdict is not None:
            ctx.store.set_judge_pick(state["run_id"], verdict.render_id, verdict.reason)
        ctx.progress(Judged(round=rnd, best=overall, decision=policy.FINISH, reason=stop))
        return {**update, "decision": policy.FINISH, "stop_reason": stop}

    embeddings = [r.scores.embedding for r in _with_embeddings(ctx, renders)]
    similarity = mean_similarity([e for e in embeddings if e])
    prompt = ctx.store.prompt(state["prompt_id"])
    expansion = Expansion(prompt=prompt["text"], negative=prompt["negative"], source=prompt["source"])
    details = [{"seed": r.seed, **r.scores.values, "composite": r.scores.composite} for r in renders]
    verdict = _ask_vlm(ctx, state["run_id"], final=False)
    # The judge's notes go to the critic only when there are some (critics without the keyword still work).
    feedback = {"feedback": verdict.problems} if verdict is not None and verdict.problems else {}
    if req.exact:  # no rewrite of the person's words, nor an edit: another round varies the seeds and knobs only
        critique, instruction, decision = None, "", policy.VARIETY
    else:
        # Repair by editing only in a text-to-image run whose engine can edit (critics without the keyword still work).
        can_edit = (req.source is None and repair_possible(ctx.engine, ctx.profile)
                    and _takes(ctx.critic.critique, "can_edit"))
        with _gate(ctx):
            critique = ctx.critic.critique(req.idea, expansion, ctx.profile, round_best, previous_best, similarity,
                                           details, **feedback, **({"can_edit": True} if can_edit else {}))
        instruction = getattr(critique, "edit", "") or ""
        editing = state.get("source") is not None or req.source is not None
        decision = policy.next_step(ctx.policy, critique.action, critique.expansion is not None,
                                    edit=policy.should_edit(can_edit=can_edit, instruction=instruction, best=overall,
                                                            target=req.target),
                                    editing=editing)
    update.update({"round": rnd + 1, "decision": decision})
    if decision == policy.EDIT:
        update.update(repair_step(ctx, ctx.store.best(state["run_id"], k=1), instruction, critique.reason))
        ctx.progress(Repair(round=rnd, render_id=update["source"]["render_id"], instruction=instruction,
                            reason=critique.reason))
    elif decision in (policy.REVISE, policy.EXPLORE) and req.source is None:
        update["source"] = None  # a new prompt draws from noise again
    if req.search == "noise":  # whatever the next round's prompt, its noise comes from the refitted distribution
        scored = [(r.spec.noise_lowfreq, r.scores.composite) for r in ctx.store.renders(state["run_id"])
                  if r.scores is not None]
        dist = noise_search.next_dist(_noise_dist(state, ctx), scored)
        update["noise_dist"] = {"mean": list(dist.mean), "std": list(dist.std)}
    if decision == policy.VARIETY:
        update["shift"], update["blind_steps"] = policy.turn_knobs(
            state.get("shift"), state.get("blind_steps", 0), profile_shift=ctx.profile.shift,
            shift_max=ctx.variety_shift_max, blind_max=ctx.variety_blind_max)
        if getattr(ctx.engine, "embed_noise", False):  # diffusers engines; others cannot honour it
            update["embed_noise"] = policy.turn_embed_noise(state.get("embed_noise", 0.0))
        if ctx.variety_handoff_max:
            update["handoff_steps"] = policy.turn_handoff(
                state.get("handoff_steps", 0), available=_can_hand_off(state, ctx),
                steps=ctx.request.steps or ctx.profile.steps, maximum=ctx.variety_handoff_max)
    elif decision == policy.REVISE:
        update["pending_revision"] = critique.expansion.to_dict()
    reason = critique.reason if critique is not None else "exact prompt: new seeds, same words"
    ctx.progress(Judged(round=rnd, best=overall, decision=decision, reason=reason, similarity=similarity,
                        diversity=policy.diversity(similarity),
                        embed_noise=update.get("embed_noise", state.get("embed_noise", 0.0)),
                        shift=update.get("shift", state.get("shift")),
                        blind_steps=update.get("blind_steps", state.get("blind_steps", 0)),
                        handoff_steps=update.get("handoff_steps", state.get("handoff_steps", 0)) or None))
    return update


def _can_hand_off(state: LoopState, ctx: LoopContext) -> bool:
    """Whether the next round's renders can start on the base model: the engine has the pair, and
    they start from noise with no CFG on the distilled model (what the engine would refuse)."""
    from reverie.orchestrator.requests import spec_controls

    refusal = getattr(ctx.engine, "handoff_refusal", None)
    if refusal is None or ctx.request.source is not None or state.get("source") or state.get("control"):
        return False
    guidance = spec_controls(ctx.request, ctx.profile).get("guidance", ctx.profile.guidance)
    return not ctx.profile.traits.runs_cfg(guidance) and not refusal()


def _takes(fn, keyword: str) -> bool:
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return keyword in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _ask_vlm(ctx: LoopContext, run_id: str, final: bool):
    """The VLM judge's verdict on the run's top candidates (best composite first), or None when
    none is configured or it gave no usable answer (the loop goes on without it, and says so)."""
    from PIL import Image

    from reverie.agents.llm import LLMUnavailable

    if ctx.vlm_judge is None:
        return None
    want = ctx.vlm_judge.top
    while True:  # the store ranks; a deleted file is left out, not fatal, and the next one takes its place
        ranked = ctx.store.best(run_id, k=want)
        on_disk = [r for r in ranked if r.path and Path(r.path).is_file()]
        if len(on_disk) >= ctx.vlm_judge.top or len(ranked) < want:
            break
        want *= 4
    top = on_disk[: ctx.vlm_judge.top]
    if not top:
        return None
    candidates = []
    for r in top:
        with Image.open(r.path) as im:
            candidates.append((r.id, im.convert("RGB")))
    try:
        with _gate(ctx):
            verdict = ctx.vlm_judge.judge(ctx.request.idea, candidates)
    except LLMUnavailable as e:
        message = f"VLM judge: no usable answer ({e}); the composite decides"
        ctx.notice(message) if ctx.notice else ctx.progress(Notice(message=message))
        return None
    ctx.progress(VlmJudged(final=final, render_id=verdict.render_id, rank=verdict.rank, of=len(candidates),
                           reason=verdict.reason, problems=verdict.problems, model=verdict.model))
    return verdict


def _with_embeddings(ctx: LoopContext, renders: list) -> list:
    # Embeddings are not stored: use those the render sink kept, and re-derive the rest (renders
    # from before a resume) from their files.
    from dataclasses import replace

    missing = [r for r in renders if not (r.scores.embedding or r.id in ctx.embeddings)]
    if missing:
        fresh = _score_files(ctx, missing)
        ctx.embeddings.update((r.id, s.embedding) for r, s in zip(missing, fresh) if s.embedding)
    return [r if r.scores.embedding else replace(r, scores=replace(r.scores, embedding=ctx.embeddings.get(r.id)))
            for r in renders]


def finish(state: LoopState, runtime: Runtime[LoopContext]) -> dict:
    ctx = _ctx(runtime)
    ctx.store.finish_run(state["run_id"], "done", state.get("stop_reason", ""))
    ctx.progress(Finished(run_id=state["run_id"], reason=state.get("stop_reason", "")))
    return {}


def _after_judge(state: LoopState) -> str:
    decision = state.get("decision", policy.FINISH)
    return {policy.REVISE: "expand", policy.EXPLORE: "expand", policy.EDIT: "expand",
            policy.VARIETY: "render"}.get(decision, decision)


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
    g.add_conditional_edges("judge", _after_judge, {"render": "render", "expand": "expand", policy.FINISH: "finish"})
    g.add_edge("finish", END)
    return g.compile(checkpointer=checkpointer)


@contextmanager
def open_checkpointer(home: Path) -> Iterator[Any]:
    """LangGraph checkpoints in home/checkpoints.db, one thread per run id."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    path = Path(home) / "checkpoints.db"
    conn = sqlite3.connect(str(path), timeout=30, check_same_thread=False)
    try:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA schema_version").fetchone()
            damage = checkpoint_damage(conn)
            if damage:
                raise sqlite3.DatabaseError(damage)
        except sqlite3.DatabaseError as e:
            if "locked" in str(e) or "busy" in str(e):
                raise
            raise ReverieError(f"the checkpoint file {path} is unusable ({e}): move it aside (mv {path} {path}.aside) "
                               "and run again; the images and reverie.db are not touched") from None
        yield SqliteSaver(conn)
    finally:
        conn.close()


def checkpoint_damage(conn: sqlite3.Connection) -> Optional[str]:
    """What is wrong inside the checkpoint file, or None. Page 1 reading fine says little: garbage
    on a later page surfaces only when a run reads its checkpoint, after its row was made. The
    file holds small states (ids and numbers), so a quick_check of every page is cheap."""
    rows = [r[0] for r in conn.execute("PRAGMA quick_check(3)").fetchall()]
    if rows == ["ok"]:
        return None
    said = " ".join(" ".join(rows).replace("*** in database main ***", "").split())  # one line for the error
    return "damaged: " + (said[:200] + "…" if len(said) > 200 else said)


def run_graph(graph, state: LoopState, ctx: LoopContext, run_id: str, recursion_limit: int) -> dict:
    """Run the loop for one run; with a checkpoint on disk, continue from its last step.

    Checkpoints make a resumed run take the same decisions (an LLM critic's revision is not
    asked again); the store makes every node idempotent for the steps after the checkpoint.
    """
    config = {"configurable": {"thread_id": run_id}, "recursion_limit": recursion_limit}
    snapshot = graph.get_state(config)
    start = None if snapshot.next else state
    return graph.invoke(start, config=config, context=ctx, durability="sync")
