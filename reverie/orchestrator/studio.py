"""The Python API: `Studio(home=...).make("a fox in the rain", n=4, rounds=2)`.

The CLI is a thin layer over this class, so both ways in behave the same.
"""

from __future__ import annotations

import queue
import secrets
import threading
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from reverie.config import load_config, resolve_home
from reverie.render.engine import ENGINES, make_engine
from reverie.render.profiles import Profile, get_profile
from reverie.render.resolution import check_megapixels, parse_aspect, size_for
from reverie.store.db import Store
from reverie.types import CONTROL_KINDS, Control, Event, ProgressFn, Reference, Render, Request, ReverieError

MAX_N = 1024
MAX_ROUNDS = 100
MAX_IDEA_CHARS = 4000
# Seeds are stored as SQLite integers (signed 64-bit) and a run adds one per image; 2^62 leaves room.
MAX_SEED = 2**62

EMBEDDED_TAIL = "a working pipeline with meaningless pictures until real weights are configured (see README)"


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


def clean_idea(idea: str) -> str:
    """Control characters out, whitespace folded; empty or huge ideas are errors."""
    if idea is None:
        idea = ""
    text = "".join(" " if unicodedata.category(ch)[0] == "C" else ch for ch in str(idea))
    text = " ".join(text.split())
    if not text:
        raise ReverieError('the idea is empty: describe what to make, for example reverie make "a fox in the rain"')
    if len(text) > MAX_IDEA_CHARS:
        raise ReverieError(f"the idea is {len(text)} characters long: keep it under {MAX_IDEA_CHARS} (reverie writes the long prompt for you)")
    return text


def validate_request(req: Request) -> Request:
    idea = clean_idea(req.idea)
    get_profile(req.profile)
    if not isinstance(req.n, int) or req.n < 1 or req.n > MAX_N:
        raise ReverieError(f"n must be between 1 and {MAX_N} (got {req.n}): pass --n 4 for four images per round")
    if not isinstance(req.rounds, int) or req.rounds < 1 or req.rounds > MAX_ROUNDS:
        raise ReverieError(f"rounds must be between 1 and {MAX_ROUNDS} (got {req.rounds})")
    parse_aspect(req.aspect)
    check_megapixels(req.megapixels)
    if req.target is not None and not (0.0 <= req.target <= 1.0):
        raise ReverieError(f"target {req.target} is out of range: the composite score is between 0 and 1, e.g. --target 0.7")
    if req.seed is not None and (not isinstance(req.seed, int) or not 0 <= req.seed <= MAX_SEED):
        raise ReverieError(f"seed {req.seed} is out of range: use a whole number from 0 to {MAX_SEED} (2^62), "
                           "or leave --seed out for a random one")
    if req.steps is not None and not (1 <= req.steps <= 200):
        raise ReverieError(f"steps must be between 1 and 200 (got {req.steps})")
    if not (0 <= req.blind_steps <= 10):
        raise ReverieError(f"blind steps must be between 0 and 10 (got {req.blind_steps})")
    for ref in req.references:
        if ref.control not in CONTROL_KINDS:
            raise ReverieError(f"unknown control kind {ref.control!r}: use one of {', '.join(CONTROL_KINDS)}")
    return Request(**{**req.__dict__, "idea": idea})


def render_size(req: Request, profile: Profile, engine) -> tuple[int, int]:
    """Width and height for a request: the profile's multiple, capped by the profile and by the
    engine where it has its own cap (the tiny engine's `max_side`)."""
    max_side = min(profile.max_side, getattr(engine, "max_side", None) or profile.max_side)
    return size_for(req.aspect, req.megapixels, profile.multiple, max_side)


def weights_present(profile: Profile, model_path: Optional[str]) -> bool:
    from reverie.render.diffusers_engine import resolve_weights

    try:
        resolve_weights(profile, model_path)
        return True
    except ReverieError:
        return False


class Studio:
    """One home, one warm engine and scorer, many runs."""

    def __init__(
        self,
        home: Optional[str | Path] = None,
        engine: str = "auto",
        profile: str = "z-image-turbo",
        scorer: str = "auto",
        model_path: Optional[str] = None,
        engine_options: Optional[dict[str, Any]] = None,
        progress: Optional[ProgressFn] = None,
        llm_url: Optional[str] = None,
        llm_model: Optional[str] = None,
        config: Optional[str | Path] = None,
        llm_timeout: Optional[float] = None,
    ):
        if engine != "auto" and engine not in ENGINES:
            raise ReverieError(f"unknown engine {engine!r}: use one of auto, {', '.join(ENGINES)}")
        get_profile(profile)
        self.home = resolve_home(home)
        self.store = Store(self.home)
        self.engine_name = engine
        self.profile_name = profile
        self.scorer_name = scorer
        self.model_path = model_path
        self.engine_options = dict(engine_options or {})
        self.progress = progress
        self._engine = None
        self._engine_key: Optional[tuple] = None
        self._scorer = None
        self._notified: set[str] = set()
        self._embedded_said = False  # the one line naming the embedded parts in use
        self.notices: list[str] = []
        # Pixel signatures of renders stored by this studio, taken from the images in memory as
        # they arrive, so best() need not decode every PNG again after the run.
        self.signatures: dict[int, tuple] = {}
        self.llm_url, self.llm_model, self.llm_timeout = llm_url, llm_model, llm_timeout
        self.config = load_config(self.home, config)
        self._run_id: Optional[str] = None  # the run LLM calls are recorded against

    # -- parts -----------------------------------------------------------------------------
    def _notice(self, message: str, progress: ProgressFn) -> None:
        if message in self._notified:
            return
        self._notified.add(message)
        self.notices.append(message)
        progress(Event("notice", {"message": message}))

    def _resolve_engine_name(self, profile: Profile) -> str:
        if self.engine_name != "auto":
            return self.engine_name
        # A model path the user gave is never silently replaced by the tiny engine: a wrong path
        # must fail with the diffusers engine's one line, not render meaningless pictures. The tiny
        # engine is a Z-Image model, so another profile without weights gets the line naming `pull`.
        if self.model_path or profile.name != "z-image-turbo" or weights_present(profile, None):
            return "diffusers"
        return "tiny"

    def engine_for(self, profile: Profile, progress: ProgressFn):
        name = self._resolve_engine_name(profile)
        key = (name, profile.name)
        if self._engine is not None and self._engine_key == key:
            return self._engine
        if self._engine is not None:
            self._engine.close()
            self._engine, self._engine_key = None, None  # a failed build must not leave a closed engine current
        options = dict(self.engine_options)
        if name == "tiny":
            options.setdefault("models_dir", str(self.home / "models"))
            self._say_embedded(progress)
        elif name == "diffusers":
            options.update(profile=profile.name, model_path=self.model_path)
        elif name == "comfyui":
            options.setdefault("profile", profile.name)
        self._engine = make_engine(name, **options)
        self._engine_key = key
        return self._engine

    def _llm_settings(self):
        from reverie.agents.llm import llm_settings

        return llm_settings(self.config.get("llm"), url=self.llm_url, model=self.llm_model, timeout=self.llm_timeout)

    def _say_embedded(self, progress: ProgressFn) -> None:
        """One line naming the embedded parts actually in use: the tiny engine, and the formula
        expander and heuristic scorer unless something better is configured."""
        if self._embedded_said:
            return
        parts = ["tiny random-weight Z-Image engine"]
        if not self._llm_settings().configured:
            parts.append("offline formula expander")
        if self.scorer(progress, quiet_if_heuristic=True).name == "heuristic":
            parts.append("heuristic scorer")
        self._embedded_said = True
        self._notice("embedded default: " + ", ".join(parts) + "; " + EMBEDDED_TAIL, progress)

    def scorer(self, progress: ProgressFn, quiet_if_heuristic: bool = False):
        if self._scorer is None:
            from reverie.scoring.scorer import make_scorer

            self._scorer = make_scorer(self.scorer_name, table=self.config.get("scoring", {}))
            quiet = self._scorer.name == "heuristic" and (quiet_if_heuristic or self._embedded_said)
            if self._scorer.honest_note and not quiet:
                self._notice(self._scorer.honest_note, progress)
        return self._scorer

    def expander_and_critic(self, progress: ProgressFn):
        from reverie.agents.critic import LLMCritic
        from reverie.agents.dreamer import DreamerExpander
        from reverie.agents.expander import FormulaExpander, RuleCritic
        from reverie.agents.llm import LLMClient, LLMUnavailable

        formula = FormulaExpander()
        settings = self._llm_settings()
        if not settings.configured:
            if self._embedded_said:  # that line already says "offline formula expander"
                return formula, RuleCritic(formula)
            self._notice("prompts: offline formula expander and rule critic (no LLM configured: pass --llm-url "
                         "or set llm.base_url in reverie.toml)", progress)
            return formula, RuleCritic(formula)
        # A fresh client per run: a server that died in one run is tried again in the next.
        llm = LLMClient(settings, record=lambda call: self.store.add_llm_call(call, run_id=self._run_id))
        dreamer = DreamerExpander(llm, fallback=formula, notice=lambda m: self._notice(m, progress))
        critic = LLMCritic(llm, fallback=RuleCritic(formula), notice=dreamer.fall_back)
        try:
            # One cheap /models call when no model is set, so the notice names the model really used.
            model = llm.model
        except LLMUnavailable as e:  # the client is now dead: every call falls back without waiting
            dreamer.fall_back(str(e))
            return dreamer, critic
        chosen = "" if settings.model else ", the first the server lists"
        self._notice(f"prompts: dreamer expander and critic over the LLM at {settings.url} (model {model}{chosen})", progress)
        return dreamer, critic

    def _control(self, req: Request, store: Store, run_id: str, progress: ProgressFn) -> Control:
        """The graph's reference step: preprocess the first reference, store it, link it to the run."""
        from reverie.agents.references import prepare_control

        ref = req.references[0]
        prepared = prepare_control(ref, req.idea, self.home / "models")
        if prepared.note:
            self._notice(prepared.note, progress)
        sha, path = store.add_control(run_id, prepared.kind, str(Path(ref.path).expanduser().resolve()),
                                           prepared.source_sha, prepared.data)
        progress(Event("control", {"kind": prepared.kind, "image_sha": sha, "path": str(path)}))
        return Control(kind=prepared.kind, image_sha=sha, image_path=str(path), strength=ref.strength)

    # -- runs ------------------------------------------------------------------------------
    def request(self, idea: str, **kw: Any) -> Request:
        refs = kw.pop("references", ()) or ()
        refs = tuple(r if isinstance(r, Reference) else Reference(**r) if isinstance(r, dict) else Reference(str(r)) for r in refs)
        kw.setdefault("profile", self.profile_name)
        return validate_request(Request(idea=idea, references=refs, **kw))

    def make(self, idea: str, progress: Optional[ProgressFn] = None, **kw: Any) -> MakeResult:
        """Expand, render, score and loop until the target or the budget; return the best."""
        from reverie.orchestrator.graph import LoopContext, build_graph, open_checkpointer, render_with_retry, run_graph
        from reverie.store.recovery import claim_run, rerender_missing, sweep_orphans

        progress = progress or self.progress or (lambda e: None)
        req = self.request(idea, **kw)
        for ref in req.references:  # a bad reference is one line, before any engine loads
            from reverie.agents.references import load_reference

            load_reference(ref.path)
        profile = get_profile(req.profile)
        engine = self.engine_for(profile, progress)
        width, height = render_size(req, profile, engine)
        base_seed = req.seed if req.seed is not None else secrets.randbelow(2**31)
        # The same command continues an unfinished run of the same request (crash, kill, Ctrl-C)
        # that no live process holds; otherwise a new run starts. We hold its lock until the end.
        run_id, base_seed, lock, resumed = claim_run(self.store, req, engine.name, base_seed,
                                                     identity=getattr(engine, "identity", engine.name))
        self._run_id = run_id
        # After the run exists: the LLM's /models call is recorded against it.
        expander, critic = self.expander_and_critic(progress)
        progress(Event("run_started", {"run_id": run_id, "idea": req.idea, "profile": profile.name, "engine": engine.name,
                                       "width": width, "height": height, "n": req.n, "rounds": req.rounds,
                                       "budget": req.n * req.rounds}))
        ctx = LoopContext(store=self.store, engine=engine, scorer=self.scorer(progress), expander=expander,
                          critic=critic, request=req, profile=profile, width=width, height=height,
                          base_seed=base_seed, progress=progress, signatures=self.signatures,
                          references=lambda r, store: self._control(r, store, run_id, progress))
        state = {"run_id": run_id, "round": 0, "seed_cursor": 0, "shift": req.shift if req.shift is not None else profile.shift,
                 "blind_steps": req.blind_steps, "history": []}
        try:
            sweep_orphans(self.store, run_id)
            if resumed:
                redone = rerender_missing(self.store, run_id, lambda specs: render_with_retry(engine, specs, progress),
                                          batch_size=lambda: getattr(engine, "batch_size", None))
                self._notice(f"continuing run {run_id} from its last committed step ({len(self.store.renders(run_id))} "
                             f"renders kept, {len(redone)} missing files rendered again)", progress)
            with open_checkpointer(self.home) as saver:
                final = run_graph(build_graph(checkpointer=saver), state, ctx, run_id, recursion_limit=10 * req.rounds + 20)
        except BaseException:
            self.store.finish_run(run_id, "interrupted", "stopped before the end; run the same command to continue")
            raise
        finally:
            lock.release()
        return self.result(run_id, k=min(req.n, 4), stop_reason=final.get("stop_reason", ""))

    def result(self, run_id: str, k: int = 4, stop_reason: str = "") -> MakeResult:
        run = self.store.get_run(run_id)
        return MakeResult(run_id=run["id"], best=self.best(run["id"], k=k), renders=self.store.renders(run["id"]),
                          stop_reason=stop_reason or run["stop_reason"], home=self.home, notices=list(self.notices))

    def best(self, run_id: str, k: int = 4) -> list[Render]:
        """Up to k of the run's best renders, near-duplicates (by pixel signature) left out."""
        from reverie.orchestrator.curation import keep_diverse
        from reverie.scoring.scorer import scoring_settings

        threshold = scoring_settings(self.config.get("scoring")).dedupe_threshold
        return keep_diverse(self.store, run_id, k, self.signatures, threshold=threshold, fill=False)[0]

    def stream(self, idea: str, **kw: Any) -> Iterator[Event]:
        """Yield progress events while the run goes; the last event is ("result", MakeResult)."""
        events: "queue.Queue[Optional[Event]]" = queue.Queue()
        box: dict[str, Any] = {}

        def work():
            try:
                box["result"] = self.make(idea, progress=events.put, **kw)
            except BaseException as e:  # handed to the consumer below
                box["error"] = e
            finally:
                events.put(None)

        t = threading.Thread(target=work, name="reverie-make", daemon=True)
        t.start()
        while (event := events.get()) is not None:
            yield event
        t.join()
        if "error" in box:
            raise box["error"]
        yield Event("result", {"result": box["result"]})

    def batch(self, file: str | Path, per_prompt: Optional[int] = None, keep: int = 4, hours: Optional[float] = None,
              aspect: str = "1:1", megapixels: float = 1.0, progress: Optional[ProgressFn] = None, **parts: Any):
        """Render every idea of a file to its budget, keep the best K of each, write the contact
        sheet; the same call after an interruption continues where it stopped. -> BatchResult"""
        from reverie.orchestrator.batch import BatchOptions, run_batch

        options = BatchOptions(per_prompt=per_prompt, keep=keep, hours=hours, profile=self.profile_name,
                               engine=self.engine_name, aspect=aspect, megapixels=megapixels)
        return run_batch(self, file, options, progress=progress or self.progress or (lambda e: None), **parts)

    def chat(self, session: str, message: str, progress: Optional[ProgressFn] = None, **kw: Any):
        """One turn of a conversation: the first message makes images, follow-ups ("make it
        night", "more like the second one") start a new round from the last one. -> ChatTurn"""
        from reverie.orchestrator.chat import chat_turn

        return chat_turn(self, session, message, progress=progress or self.progress or (lambda e: None), **kw)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
        if self._scorer is not None:
            self._scorer.close()
        self.store.close()

    def __enter__(self) -> "Studio":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
