"""The Python API: `Studio(home=...).make("a fox in the rain", n=4, rounds=2)`.

The CLI is a thin layer over this class, so both ways in behave the same.
"""

from __future__ import annotations

import contextlib
import contextvars
import secrets
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from reverie.config import load_config, resolve_home
from reverie.interrupts import deferred_interrupt
from reverie.orchestrator.requests import check_knobs, render_size, validate_request
from reverie.orchestrator.run import MakeResult, Run
from reverie.orchestrator.worker import EngineWorker
from reverie.profiles import DEFAULT_PROFILE, Profile, get_profile
from reverie.render.registry import ENGINES, make_engine
from reverie.store.db import Store
from reverie.types import Control, Event, ProgressFn, Reference, Render, Request, ReverieError

TINY_PROFILE = "z-image-turbo"  # the tiny engine is a random-weight Z-Image Turbo, whatever the default profile
EMBEDDED_TAIL = "a working pipeline with meaningless pictures until real weights are configured (see README)"


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
    from reverie.orchestrator.ray_pool import RayWorker

    return RayWorker(address, workers=workers)


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
    def request(self, idea: str, *, n: int = 4, rounds: int = 2, target: Optional[float] = None, aspect: str = "1:1",
                megapixels: float = 1.0, profile: Optional[str] = None,
                references: Sequence[Reference | dict | str] = (), seed: Optional[int] = None,
                shift: Optional[float] = None, blind_steps: int = 0, steps: Optional[int] = None,
                max_seconds: Optional[float] = None, max_renders: Optional[int] = None,
                embed_noise: float = 0.0) -> Request:
        """A checked Request (what `open_run` takes); the options are `make`'s. A bad value is
        one ReverieError line naming the fix."""
        refs = tuple(r if isinstance(r, Reference) else Reference(**r) if isinstance(r, dict) else Reference(str(r))
                     for r in references or ())
        return validate_request(Request(idea=idea, n=n, rounds=rounds, target=target, aspect=aspect,
                                        megapixels=megapixels, profile=profile or self.profile_name, references=refs,
                                        seed=seed, shift=shift, blind_steps=blind_steps, steps=steps,
                                        max_seconds=max_seconds, max_renders=max_renders, embed_noise=embed_noise))

    def open_run(self, request: Request, *, run_id: Optional[str] = None,
                 progress: Optional[ProgressFn] = None) -> Run:
        """Open the run a request makes: the one place runs are found or created and locked.

        The Run holds the run's lock until it is closed (use it in a `with` block), so another
        process sees it running. A bad reference or a knob the engine cannot honour is one line,
        before anything is created. See reverie/orchestrator/run.py.

        Args:
            request: what to make (`Studio.request(idea, ...)` builds a checked one).
            run_id: take this run (a batch item knows its run). None: continue the oldest
                unfinished run of the same request on the same engine identity that no live
                process holds (after a crash, a kill, Ctrl-C), or start a new one.
            progress: called with the events of opening (the engine loading, notices).

        Returns:
            Run: its id, request, first seed, whether it resumed; `execute`, `loop`, `best`.
        """
        from reverie.agents.references import load_reference
        from reverie.store.recovery import claim_run, hold_run

        progress = progress or self.progress or (lambda e: None)
        req = validate_request(request)
        for ref in req.references:  # a bad reference is one line, before any engine loads
            load_reference(ref.path)
        engine = self.engine_for(get_profile(req.profile), progress)
        check_knobs(req, engine)
        if run_id is not None:
            row, lock = hold_run(self.store, run_id)
            return Run(self, id=row["id"], request=req, base_seed=int(row["base_seed"]), resumed=True, lock=lock)
        base_seed = req.seed if req.seed is not None else secrets.randbelow(2**31)
        run_id, base_seed, lock, resumed = claim_run(self.store, req, engine.name, base_seed,
                                                     identity=getattr(engine, "identity", engine.name))
        return Run(self, id=run_id, request=req, base_seed=base_seed, resumed=resumed, lock=lock)

    def make(self, idea: str, *, n: int = 4, rounds: int = 2, target: Optional[float] = None, aspect: str = "1:1",
             megapixels: float = 1.0, profile: Optional[str] = None,
             references: Sequence[Reference | dict | str] = (), seed: Optional[int] = None,
             shift: Optional[float] = None, blind_steps: int = 0, steps: Optional[int] = None,
             max_seconds: Optional[float] = None, max_renders: Optional[int] = None, embed_noise: float = 0.0,
             progress: Optional[ProgressFn] = None, stop: Optional[threading.Event] = None) -> MakeResult:
        """Expand, render, score and loop until the target or the budget; return the best.

        The same call after a crash, a kill or Ctrl-C continues the unfinished run.

        Args:
            idea: what to make, in a few words; the expander writes the long prompt.
            n: images per round (1-1024).
            rounds: rounds of expand, render, score and critique at most (1-100).
            target: stop once the best composite score reaches it (0-1); None: run every round.
            aspect: "W:H", e.g. "1:1", "2:3", "16:9".
            megapixels: the image area; snapped to the profile's multiple and size cap.
            profile: the model profile (`reverie models`); None: the studio's.
            references: reference images: paths, Reference objects, or dicts of Reference's fields
                (path, control "auto" | "canny" | "depth" | "pose" | "img2img", strength).
            seed: the first seed (0 to 2^62); each image takes the next; None: a random one.
            shift: the flow-matching shift (0.5-20); None: the profile's.
            blind_steps: denoising steps without the prompt at the start, for variety (0-10).
            steps: sampling steps (1-200); None: the profile's.
            max_seconds: stop starting new rounds after this many seconds.
            max_renders: a render budget that need not be a multiple of n.
            embed_noise: noise on the text embeddings, a share of their spread (0-0.5).
            progress: called with every progress Event; None: the studio's.
            stop: set it (a server whose client hung up) to end the run between images.

        Returns:
            MakeResult: the run id, its best renders (the VLM judge's pick first), every render,
            why it stopped, and the notices said along the way.
        """
        progress = progress or self.progress or (lambda e: None)
        req = self.request(idea, n=n, rounds=rounds, target=target, aspect=aspect, megapixels=megapixels,
                           profile=profile, references=references, seed=seed, shift=shift, blind_steps=blind_steps,
                           steps=steps, max_seconds=max_seconds, max_renders=max_renders, embed_noise=embed_noise)
        with self.open_run(req, progress=progress) as run:
            final = run.execute(progress=progress, stop=stop)
        return run.result(k=min(req.n, 4), stop_reason=final.get("stop_reason", ""))

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

    def best(self, run_id: str, k: int = 4, fill: bool = False) -> list[Render]:
        """Up to k of the run's best renders: the VLM judge's pick first, then by composite,
        near-duplicates left out (with `fill`, they fill up to k). See orchestrator/curation.py."""
        return self.curate(run_id, k, fill=fill).renders

    def curate(self, run_id: str, k: int = 4, fill: bool = False):
        """`best` with the near-duplicates it filled in named (a batch's kept set). -> Curated"""
        from reverie.orchestrator.curation import curate, near_duplicate_threshold

        return curate(self.store, run_id, k, threshold=near_duplicate_threshold(self.config),
                      signatures=self.signatures, fill=fill)

    def stream(self, idea: str, *, n: int = 4, rounds: int = 2, target: Optional[float] = None, aspect: str = "1:1",
               megapixels: float = 1.0, profile: Optional[str] = None,
               references: Sequence[Reference | dict | str] = (), seed: Optional[int] = None,
               shift: Optional[float] = None, blind_steps: int = 0, steps: Optional[int] = None,
               max_seconds: Optional[float] = None, max_renders: Optional[int] = None, embed_noise: float = 0.0,
               stop: Optional[threading.Event] = None) -> Iterator[Event]:
        """`make`, as a generator: yield the progress events while the run goes; the last event
        is ("result", {"result": MakeResult}). The options are `make`'s; leaving the loop early
        stops the run between images."""
        opening: list[Event] = []
        req = self.request(idea, n=n, rounds=rounds, target=target, aspect=aspect, megapixels=megapixels,
                           profile=profile, references=references, seed=seed, shift=shift, blind_steps=blind_steps,
                           steps=steps, max_seconds=max_seconds, max_renders=max_renders, embed_noise=embed_noise)
        with self.open_run(req, progress=opening.append) as run:
            yield from opening
            final: dict[str, Any] = {}
            for event in run.loop(stop=stop):
                if event.kind == "finished":
                    final["stop_reason"] = event.data.get("reason", "")
                yield event
        yield Event("result", {"result": run.result(k=min(req.n, 4), stop_reason=final.get("stop_reason", ""))})

    def batch(self, file: str | Path, *, per_prompt: Optional[int] = None, keep: int = 4, hours: Optional[float] = None,
              aspect: str = "1:1", megapixels: float = 1.0, target: Optional[float] = None,
              rounds: Optional[int] = None, n: Optional[int] = None, policy: str = "explore",
              retry_failed: bool = False, progress: Optional[ProgressFn] = None):
        """Run every idea of a file through the agent loop to its budget, keep the best K of
        each, write the contact sheet; the same call after an interruption continues where it
        stopped.

        Args:
            file: one idea a line, or JSONL with an "idea" field and per-idea overrides.
            per_prompt: renders per idea; None: 8, or unlimited when `hours` is given.
            keep: images kept per idea (the judge's pick first, near-duplicates filling up).
            hours: a time budget for the whole batch, shared fairly between ideas.
            aspect: "W:H" for every idea without its own.
            megapixels: the image area for every idea without its own.
            target: an idea stops once its best composite score reaches it (0-1).
            rounds: rounds per idea; None: as many as the render budget needs.
            n: seeds per round; None: 4.
            policy: the loop policy between rounds, "explore" or "revise".
            retry_failed: try again ideas set aside after crashing the process twice.
            progress: called with every progress Event.

        Returns:
            BatchResult: per idea its run, renders and kept images; the contact sheet's path.
        """
        from reverie.orchestrator.batch import BatchOptions, run_batch

        options = BatchOptions(per_prompt=per_prompt, keep=keep, hours=hours, profile=self.profile_name,
                               engine=self.engine_name, aspect=aspect, megapixels=megapixels, target=target,
                               rounds=rounds, n=n, policy=policy)
        return run_batch(self, file, options, progress=progress or self.progress or (lambda e: None),
                         retry_failed=retry_failed)

    def chat(self, session: str, message: str, *, n: Optional[int] = None, rounds: Optional[int] = None,
             aspect: Optional[str] = None, megapixels: Optional[float] = None, target: Optional[float] = None,
             profile: Optional[str] = None, progress: Optional[ProgressFn] = None,
             stop: Optional[threading.Event] = None, interpreter: Any = None,
             on_open: Optional[Callable[[Run], None]] = None):
        """One turn of a conversation: the first message makes images, follow-ups ("make it
        night", "more like the second one") start a new round from the last one.

        Args:
            session: the conversation's name; the same name continues it, across processes.
            message: what the person wrote.
            n, rounds, megapixels: per-turn options (None: 4 images, 2 rounds, 1 megapixel, or what
                the last turn used).
            aspect, target, profile: the first turn's options; follow-ups change them by what they say.
            progress: called with every progress Event.
            stop: set it to cancel the turn between images (what it rendered is kept, and so is
                the turn).
            interpreter: what reads a message (orchestrator/chat.py's Interpreter); None: the
                offline rules, or the configured LLM in front of them.
            on_open: called with the turn's Run once it is opened.

        Returns:
            ChatTurn: the turn's number, run, best images and how the message was read.
        """
        from reverie.orchestrator.chat import chat_turn

        options = {"n": n, "rounds": rounds, "aspect": aspect, "megapixels": megapixels, "target": target,
                   "profile": profile}
        return chat_turn(self, session, message, progress=progress or self.progress or (lambda e: None),
                         interpreter=interpreter, stop=stop, on_open=on_open, **options)

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
