"""The Python API: `Studio(home=...).make("a fox in the rain", n=4, rounds=2)`.

The CLI is a thin layer over this class, so both ways in behave the same.
"""

from __future__ import annotations

import contextlib
import contextvars
import queue
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from reverie.config import load_config, resolve_home
from reverie.interrupts import deferred_interrupt
from reverie.orchestrator.requests import check_knobs, render_size, validate_request
from reverie.orchestrator.worker import EngineWorker
from reverie.profiles import DEFAULT_PROFILE, Profile, get_profile
from reverie.render.registry import ENGINES, make_engine
from reverie.store.db import Store
from reverie.types import Control, Event, ProgressFn, Reference, Render, Request, ReverieError

TINY_PROFILE = "z-image-turbo"  # the tiny engine is a random-weight Z-Image Turbo, whatever the default profile
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


def weights_present(profile: Profile, model_path: Optional[str]) -> bool:
    from reverie.render.diffusers_engine import resolve_weights

    try:
        resolve_weights(profile, model_path)
        return True
    except ReverieError:
        return False


# The run an LLM call belongs to, per thread: a batch expands several ideas at once, and each
# call is filed under its own idea's run.
current_run: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("reverie_current_run", default=None)


class _LockedScorer:
    """One scorer shared by concurrent runs: its calls take turns (models are not thread-safe)."""

    def __init__(self, scorer):
        self._scorer, self._lock = scorer, threading.Lock()

    def score(self, *args, **kwargs):
        with self._lock:
            return self._scorer.score(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._scorer, name)


def _ray_worker(address: str, workers: Optional[int]):
    from reverie.orchestrator.ray_pool import ray_worker

    return ray_worker(address, workers=workers)


class Studio:
    """One home, one engine worker with its warm engine, one scorer, many runs.

    Every way in runs `run_loop`: make, each idea of a batch, each chat turn. Parts can be
    injected (an engine, scorer, expander or critic object instead of a name), as tests and
    content pipelines do.
    """

    def __init__(
        self,
        home: Optional[str | Path] = None,
        *,
        engine: Any = "auto",
        profile: str = DEFAULT_PROFILE,
        scorer: Any = "auto",
        expander: Any = None,
        critic: Any = None,
        model_path: Optional[str] = None,
        engine_options: Optional[dict[str, Any]] = None,
        progress: Optional[ProgressFn] = None,
        llm_url: Optional[str] = None,
        llm_model: Optional[str] = None,
        config: Optional[str | Path] = None,
        llm_timeout: Optional[float] = None,
        ray: Optional[str] = None,
        workers: Optional[int] = None,
        llm_path: Optional[str] = None,
    ):
        if isinstance(engine, str) and engine != "auto" and engine not in ENGINES:
            raise ReverieError(f"unknown engine {engine!r}: use one of auto, {', '.join(ENGINES)}")
        if workers is not None and ray is None:
            raise ReverieError("--workers sets how many Ray engine workers: pass --ray local (or auto, or ray://HOST:10001) too")
        if ray is not None:  # refused here, before a Ray instance starts
            from reverie.orchestrator.ray_pool import check_ray_request

            check_ray_request(address=ray, engine=engine, workers=workers)
        get_profile(profile)
        self.home = resolve_home(home)
        self.store = Store(self.home)
        self._injected_engine = None if isinstance(engine, str) else engine
        self.engine_name = engine if isinstance(engine, str) else engine.name
        self.profile_name = profile
        self.scorer_name = scorer if isinstance(scorer, str) else scorer.name
        self._scorer = None if isinstance(scorer, str) else _LockedScorer(scorer)
        self._expander, self._critic = expander, critic
        self.model_path = model_path
        self.engine_options = dict(engine_options or {})
        self.progress = progress
        self._engines: dict[tuple, Any] = {}
        self._cache: dict[str, Any] = {}
        self._exit = contextlib.ExitStack()  # what closes with the studio (the checkpoint connection)
        self._parts_lock = threading.RLock()
        self.worker = EngineWorker() if ray is None else _ray_worker(ray, workers)
        self._notified: set[str] = set()
        self._embedded_said = False  # the one line naming the embedded parts in use
        self.notices: list[str] = []
        # Pixel signatures of renders stored by this studio, taken from the images in memory as
        # they arrive, so best() need not decode every PNG again after the run.
        self.signatures: dict[int, tuple] = {}
        self.llm_url, self.llm_model, self.llm_timeout = llm_url, llm_model, llm_timeout
        self.llm_path = llm_path
        self.config = load_config(self.home, config)
        self._llm_settings()  # a bad [llm] backend or --llm-path is one line, before anything loads

    # -- parts -----------------------------------------------------------------------------
    def cached(self, name: str, build):
        """A part built once per studio (a chat session's interpreter and its LLM client)."""
        with self._parts_lock:
            if name not in self._cache:
                self._cache[name] = build()
            return self._cache[name]

    def notice(self, message: str, progress: ProgressFn) -> None:
        """Say a line once per studio (a chat session, a batch): repeated notices stay quiet."""
        with self._parts_lock:
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
        if self.model_path or profile.name != TINY_PROFILE or weights_present(profile, None):
            return "diffusers"
        return "tiny"

    def engine_for(self, profile: Profile, progress: ProgressFn):
        """The engine for a profile, built once (cheap: weights load on its first render). The
        engine worker unloads one model before another renders."""
        if self._injected_engine is not None:
            return self._injected_engine
        if not self._engines:  # finding weights imports torch and diffusers: seconds with nothing else to show
            progress(Event("loading", {"what": "engine", "profile": profile.name}))
        name = self._resolve_engine_name(profile)
        key = (name, profile.name)
        with self._parts_lock:
            if key in self._engines:
                return self._engines[key]
            options = dict(self.engine_options)
            if name == "tiny":
                options.setdefault("models_dir", str(self.home / "models"))
                self._say_embedded(progress)
            elif name == "diffusers":
                options.update(profile=profile.name, model_path=self.model_path)
            elif name == "comfyui":
                options.setdefault("profile", profile.name)
            with deferred_interrupt():  # its imports run native code a Ctrl-C must not cut (see interrupts)
                self._engines[key] = make_engine(name, **options)
            self.worker.adopt(self._engines[key], name=name, options=options)
            return self._engines[key]

    def _llm_settings(self):
        from reverie.agents.llm import llm_settings

        return llm_settings(self.config.get("llm"), url=self.llm_url, model=self.llm_model, timeout=self.llm_timeout,
                            path=self.llm_path)

    def llm_backend(self) -> str:
        """What writes the prompts, as configured: auto, server, encoder, local (a --llm-path folder) or off."""
        settings = self._llm_settings()
        return "local" if settings.path and settings.local else settings.backend

    def _say_embedded(self, progress: ProgressFn) -> None:
        """One line naming the embedded parts actually in use: the tiny engine, and the formula
        expander and heuristic scorer unless something better is configured."""
        if self._embedded_said:
            return
        parts = ["tiny random-weight Z-Image engine"]
        settings = self._llm_settings()
        if self._expander is None and not (settings.configured or settings.local):
            parts.append("offline formula expander")
        if self.scorer(progress, quiet_if_heuristic=True).name == "heuristic":
            parts.append("heuristic scorer")
        self._embedded_said = True
        self.notice("embedded default: " + ", ".join(parts) + "; " + EMBEDDED_TAIL, progress)

    def scorer(self, progress: ProgressFn, quiet_if_heuristic: bool = False):
        with self._parts_lock:
            if self._scorer is None:
                from reverie.scoring.scorer import make_scorer
                from reverie.scoring.taste import tastes_from

                # A weighting learnt from this home's picks (`reverie taste`) replaces the default;
                # open_clip imports torchvision, torch._dynamo and triton: see interrupts.
                with deferred_interrupt():
                    self._scorer = _LockedScorer(make_scorer(self.scorer_name, table=self.config.get("scoring", {}),
                                                             tastes=tastes_from(self.store.tastes.active())))
                quiet = self._scorer.name == "heuristic" and (quiet_if_heuristic or self._embedded_said)
                if self._scorer.honest_note and not quiet:
                    self.notice(self._scorer.honest_note, progress)
            return self._scorer

    def expander_and_critic(self, progress: ProgressFn, engine=None):
        """The expander and critic of this studio: built once, one LLM client for the session
        (a chat, a batch), its calls filed under the run that made them. With no LLM and a
        ComfyUI engine whose server can run TextGenerate, the dreamer runs on that server."""
        with self._parts_lock:
            if self._expander is None or self._critic is None:
                expander, critic = self._build_expander_and_critic(progress, engine)
                self._expander = self._expander or expander
                self._critic = self._critic or critic
            return self._expander, self._critic

    def _build_expander_and_critic(self, progress: ProgressFn, engine=None):
        from reverie.agents.comfy_dreamer import comfy_expander
        from reverie.agents.critic import LLMCritic
        from reverie.agents.dreamer import DreamerExpander
        from reverie.agents.expander import FormulaExpander, RuleCritic
        from reverie.agents.llm import LLMClient, LLMUnavailable

        formula = FormulaExpander()
        settings = self._llm_settings()
        local = self._local_llm(settings, engine, progress)
        if local is not None:
            dreamer = DreamerExpander(local, fallback=formula, notice=lambda m: self.notice(m, progress))
            self.notice(f"prompts: dreamer expander and critic on {local.model}, in this process "
                        f"(turn it off with [llm] backend = \"off\")", progress)
            return dreamer, LLMCritic(local, fallback=RuleCritic(formula), notice=dreamer.fall_back)
        if settings.backend == "off":
            return formula, RuleCritic(formula)
        if not settings.configured:
            textgen = comfy_expander(engine, formula, notice=lambda m: self.notice(m, progress),
                                     record=lambda call: self.store.add_llm_call(call, run_id=current_run.get()))
            if textgen is not None:  # the critic's rewrites come from the same encoder
                return textgen, RuleCritic(textgen)
            if not self._embedded_said:  # that line already says "offline formula expander"
                self.notice("prompts: offline formula expander and rule critic (no LLM configured: pass --llm-url "
                            "or set llm.base_url in reverie.toml)", progress)
            return formula, RuleCritic(formula)
        llm = LLMClient(settings, record=lambda call: self.store.add_llm_call(call, run_id=current_run.get()))
        dreamer = DreamerExpander(llm, fallback=formula, notice=lambda m: self.notice(m, progress))
        critic = LLMCritic(llm, fallback=RuleCritic(formula), notice=dreamer.fall_back)
        try:
            # One cheap /models call when no model is set, so the notice names the model really used.
            model = llm.model
        except LLMUnavailable as e:  # the client is now dead: every call falls back without waiting
            dreamer.fall_back(str(e))
            return dreamer, critic
        chosen = "" if settings.model else ", the first the server lists"
        self.notice(f"prompts: dreamer expander and critic over the LLM at {settings.url} (model {model}{chosen})", progress)
        return dreamer, critic

    def _local_llm(self, settings, engine, progress: ProgressFn):
        """The dreamer's LLM in this process, or None: a model folder (`--llm-path`); the engine's
        own text encoder when asked (`[llm] backend = "encoder"`), or by default when no server is
        configured and the engine loads a real Z-Image, whose encoder is a chat model."""
        from reverie.agents.local_llm import LocalLLM, encoder_loader, folder_loader
        from reverie.render.comfy_workflow import TEXTGEN_FAMILIES

        def record(call: dict) -> None:
            self.store.add_llm_call(call, run_id=current_run.get())

        if settings.path:
            return LocalLLM(settings, folder_loader(settings.path), backend="local", model=settings.path,
                            record=record, progress=progress)
        load = getattr(engine, "load", None)
        profile = getattr(engine, "profile", None)
        name = getattr(engine, "name", "no engine")
        if settings.backend == "encoder":
            if not callable(load):
                raise ReverieError(f'[llm] backend = "encoder" needs a diffusers or tiny engine, not {name}: '
                                   'pass --llm-path a model folder, or set backend = "auto"')
        elif not (settings.backend == "auto" and not settings.configured and name == "diffusers" and callable(load)
                  and profile is not None and profile.family in TEXTGEN_FAMILIES
                  and not (self.model_path and (Path(self.model_path) / "reverie-tiny.json").exists())):
            return None  # the tiny engine's random encoder is no language model: formula it is
        label = f"the {name} {getattr(profile, 'name', '')} text encoder".replace("  ", " ")
        # The weights are the engine's: after each call only the small wrapper around them goes.
        return LocalLLM(settings, encoder_loader(load), backend="encoder", model=label, record=record,
                        progress=progress, keep_loaded=False, runner=lambda fn: self.worker.call(engine, fn))

    def prepare_reference(self, req: Request, run_id: str, progress: ProgressFn) -> Control:
        """The graph's reference step: preprocess the first reference, store it, link it to the run."""
        from reverie.agents.references import prepare_control

        ref = req.references[0]
        prepared = prepare_control(ref, req.idea, self.home / "models")
        if prepared.note:
            self.notice(prepared.note, progress)
        sha, path = self.store.add_control(run_id, prepared.kind, str(Path(ref.path).expanduser().resolve()),
                                           prepared.source_sha, prepared.data)
        progress(Event("control", {"kind": prepared.kind, "image_sha": sha, "path": str(path)}))
        return Control(kind=prepared.kind, image_sha=sha, image_path=str(path), strength=ref.strength)

    # -- runs ------------------------------------------------------------------------------
    def request(self, idea: str, **kw: Any) -> Request:
        refs = kw.pop("references", ()) or ()
        refs = tuple(r if isinstance(r, Reference) else Reference(**r) if isinstance(r, dict) else Reference(str(r)) for r in refs)
        kw.setdefault("profile", self.profile_name)
        return validate_request(Request(idea=idea, references=refs, **kw))

    def make(self, idea: str, *, progress: Optional[ProgressFn] = None, stop: Optional[threading.Event] = None,
             **kw: Any) -> MakeResult:
        """Expand, render, score and loop until the target or the budget; return the best.
        Setting `stop` (a server whose client hung up) ends the run between images."""
        from reverie.store.recovery import claim_run

        progress = progress or self.progress or (lambda e: None)
        req = self.request(idea, **kw)
        for ref in req.references:  # a bad reference is one line, before any engine loads
            from reverie.agents.references import load_reference

            load_reference(ref.path)
        profile = get_profile(req.profile)
        engine = self.engine_for(profile, progress)
        check_knobs(req, engine)
        base_seed = req.seed if req.seed is not None else secrets.randbelow(2**31)
        # The same command continues an unfinished run of the same request (crash, kill, Ctrl-C)
        # that no live process holds; otherwise a new run starts. We hold its lock until the end.
        run_id, base_seed, lock, resumed = claim_run(self.store, req, engine.name, base_seed,
                                                     identity=getattr(engine, "identity", engine.name))
        try:
            final = self.run_loop(req, run_id=run_id, base_seed=base_seed, resumed=resumed, progress=progress,
                                  stop=stop)
        finally:
            lock.release()
        return self.result(run_id, k=min(req.n, 4), stop_reason=final.get("stop_reason", ""))

    def run_loop(self, req: Request, *, run_id: str, base_seed: int, resumed: bool, progress: ProgressFn,
                 policy: str = "revise", order: int = 0, deadline: Optional[float] = None, deadline_label: str = "",
                 stop: Optional[threading.Event] = None, llm_gate: Any = None,
                 on_round_start=None, on_round_end=None) -> dict:
        """One run of the agent graph, to its end; the run's row says how it ended.

        make, each batch idea and each chat turn come here: the same nodes, the same store and
        checkpoints, only the loop policy and the budget differ.
        """
        from reverie.orchestrator.graph import LoopContext, build_graph, run_graph
        from reverie.store.recovery import rerender_missing, sweep_orphans

        profile = get_profile(req.profile)
        engine = self.engine_for(profile, progress)
        width, height = render_size(req, profile, engine)
        token = current_run.set(run_id)
        try:
            # After the run exists: the LLM's /models call is recorded against it.
            expander, critic = self.expander_and_critic(progress, engine)
            progress(Event("run_started", {"run_id": run_id, "idea": req.idea, "profile": profile.name,
                                           "engine": engine.name, "width": width, "height": height, "n": req.n,
                                           "rounds": req.rounds, "budget": req.max_renders or req.n * req.rounds}))
            ctx = LoopContext(store=self.store, engine=engine, scorer=self.scorer(progress), expander=expander,
                              critic=critic, request=req, profile=profile, width=width, height=height,
                              base_seed=base_seed, progress=progress, signatures=self.signatures, worker=self.worker,
                              policy=policy, order=order, deadline=deadline, deadline_label=deadline_label, stop=stop,
                              llm_gate=llm_gate, on_round_start=on_round_start, on_round_end=on_round_end,
                              references=lambda r, store: self.prepare_reference(r, run_id, progress),
                              vlm_judge=self.vlm_judge(progress), notice=lambda m: self.notice(m, progress))
            state = {"run_id": run_id, "round": 0, "seed_cursor": 0,
                     "shift": req.shift if req.shift is not None else profile.shift,
                     "blind_steps": req.blind_steps, "embed_noise": req.embed_noise, "history": []}
            if resumed:  # a run just made has written no file yet: only a resumed one has strays to adopt
                sweep_orphans(self.store, run_id)
                redone = rerender_missing(
                    self.store, run_id,
                    lambda specs: self.worker.render(engine, specs, progress=progress, priority=(-1, profile.name, order)),
                    batch_size=lambda: getattr(engine, "batch_size", None))
                self.notice(f"continuing run {run_id} from its last committed step ({len(self.store.renders(run_id))} "
                            f"renders kept, {len(redone)} missing files rendered again)", progress)
            final = run_graph(build_graph(checkpointer=self._checkpointer()), state, ctx, run_id,
                              recursion_limit=10 * req.rounds + 20)
        except ReverieError as e:
            self.store.finish_run(run_id, "failed", str(e))
            raise
        except BaseException:
            self.store.finish_run(run_id, "interrupted", "stopped before the end; run the same command to continue")
            raise
        finally:
            current_run.reset(token)
        failed = self.store.failed_reason(run_id)
        if failed is not None:  # not one image: the run failed, and says why
            message = f"no image was rendered: {failed}"
            self.store.finish_run(run_id, "failed", message)
            raise ReverieError(message)
        return final

    def vlm_judge(self, progress: ProgressFn):
        """The [judge] vision model of this studio, or None; built once, its calls filed under their run."""
        def build():
            from reverie.agents.vlm_judge import build_vlm_judge

            judge = build_vlm_judge(self.config.get("judge"),
                                    record=lambda call: self.store.add_llm_call(call, run_id=current_run.get()))
            if judge is not None:
                self.notice(f"VLM judge: {judge.llm.settings.url} compares the top {judge.top} candidates "
                            "for each revision and the final pick", progress)
            return judge

        return self.cached("vlm_judge", build)

    def _checkpointer(self):
        """One checkpoint connection for every run of this studio (a batch runs many at once:
        connections of their own would contend for the file's locks)."""
        from reverie.orchestrator.graph import open_checkpointer

        with self._parts_lock:
            if "checkpointer" not in self._cache:
                self._cache["checkpointer"] = self._exit.enter_context(open_checkpointer(self.home))
            return self._cache["checkpointer"]

    def result(self, run_id: str, k: int = 4, stop_reason: str = "") -> MakeResult:
        run = self.store.get_run(run_id)
        return MakeResult(run_id=run["id"], best=self.best(run["id"], k=k), renders=self.store.renders(run["id"]),
                          stop_reason=stop_reason or run["stop_reason"], home=self.home, notices=list(self.notices))

    def best(self, run_id: str, k: int = 4) -> list[Render]:
        """Up to k of the run's best renders, near-duplicates (by pixel signature) left out."""
        from reverie.orchestrator.curation import keep_diverse
        from reverie.scoring.scorer import scoring_settings

        threshold = scoring_settings(self.config.get("scoring")).dedupe_threshold
        best = keep_diverse(self.store, run_id, k, self.signatures, threshold=threshold, fill=False)[0]
        chosen = self.store.judge_pick(run_id)  # a VLM judge's final pick leads
        if chosen is not None and best and best[0].id != chosen["render_id"]:
            best = [self.store.render_by_id(chosen["render_id"])] + [r for r in best if r.id != chosen["render_id"]][: k - 1]
        return best

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

    def batch(self, file: str | Path, *, per_prompt: Optional[int] = None, keep: int = 4, hours: Optional[float] = None,
              aspect: str = "1:1", megapixels: float = 1.0, target: Optional[float] = None,
              rounds: Optional[int] = None, n: Optional[int] = None, policy: str = "explore",
              retry_failed: bool = False, progress: Optional[ProgressFn] = None):
        """Run every idea of a file through the agent loop to its budget, keep the best K of
        each, write the contact sheet; the same call after an interruption continues where it
        stopped. -> BatchResult"""
        from reverie.orchestrator.batch import BatchOptions, run_batch

        options = BatchOptions(per_prompt=per_prompt, keep=keep, hours=hours, profile=self.profile_name,
                               engine=self.engine_name, aspect=aspect, megapixels=megapixels, target=target,
                               rounds=rounds, n=n, policy=policy)
        return run_batch(self, file, options, progress=progress or self.progress or (lambda e: None),
                         retry_failed=retry_failed)

    def chat(self, session: str, message: str, *, progress: Optional[ProgressFn] = None, **kw: Any):
        """One turn of a conversation: the first message makes images, follow-ups ("make it
        night", "more like the second one") start a new round from the last one. -> ChatTurn"""
        from reverie.orchestrator.chat import chat_turn

        return chat_turn(self, session, message, progress=progress or self.progress or (lambda e: None), **kw)

    def close(self) -> None:
        self.worker.close()
        for engine in list(self._engines.values()) + ([self._injected_engine] if self._injected_engine else []):
            engine.close()
        if self._scorer is not None:
            self._scorer.close()
        self._exit.close()
        self.store.close()

    def __enter__(self) -> "Studio":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
