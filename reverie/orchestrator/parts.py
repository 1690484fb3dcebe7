"""The parts a studio runs on, built from its configuration: engines, scorer, prompt writer
(expander and critic) and VLM judge.

Each part is built once, on first use, and shared by every run of the studio. A part can be
injected instead of named (an engine, scorer, expander or critic object), as tests and content
pipelines do. The prompt writer is one of five: a dreamer over a model folder in this process
(`--llm-path`), over the engine's own text encoder, over an LLM server, over a ComfyUI server's
TextGenerate, or the offline formula expander with the rule critic.
"""

from __future__ import annotations

import contextvars
import threading
from pathlib import Path
from typing import Any, Callable, Optional

from reverie.interrupts import deferred_interrupt
from reverie.profiles import Profile
from reverie.render.registry import make_engine
from reverie.types import Loading, ProgressFn, ReverieError

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


class Parts:
    """Builds and holds a studio's parts. `notice(message, progress)` says a line once per studio."""

    def __init__(self, *, home: Path, store: Any, config: dict, worker: Any, notice: Callable[[str, ProgressFn], None],
                 engine: Any = "auto", scorer: Any = "auto", expander: Any = None, critic: Any = None,
                 model_path: Optional[str] = None, engine_options: Optional[dict[str, Any]] = None,
                 llm_url: Optional[str] = None, llm_model: Optional[str] = None, llm_timeout: Optional[float] = None,
                 llm_path: Optional[str] = None):
        self.home, self.store, self.config, self.worker, self.notice = home, store, config, worker, notice
        self._injected_engine = None if isinstance(engine, str) else engine
        self.engine_name = engine if isinstance(engine, str) else engine.name
        self.scorer_name = scorer if isinstance(scorer, str) else scorer.name
        self._scorer = None if isinstance(scorer, str) else _LockedScorer(scorer)
        self._expander, self._critic = expander, critic
        self.model_path = model_path
        self.engine_options = dict(engine_options or {})
        self.llm_url, self.llm_model, self.llm_timeout, self.llm_path = llm_url, llm_model, llm_timeout, llm_path
        self._engines: dict[tuple, Any] = {}
        self._cache: dict[str, Any] = {}
        self._parts_lock = threading.RLock()
        self._embedded_said = False  # the one line naming the embedded parts in use
        self.previews = False  # live previews while images render (the web studio turns them on)
        self._llm_settings()  # a bad [llm] backend or --llm-path is one line, before anything loads

    def cached(self, name: str, build):
        """A part built once (the VLM judge, a chat session's interpreter and its LLM client)."""
        with self._parts_lock:
            if name not in self._cache:
                self._cache[name] = build()
            return self._cache[name]

    def engines(self) -> list:
        """The engines built so far (an injected one included)."""
        with self._parts_lock:
            return list(self._engines.values()) + ([self._injected_engine] if self._injected_engine else [])

    def check_weights(self, profile: Profile) -> None:
        """Weights never pulled, or a --model-path that is not there: one line before the engine loads
        and before a run is created (a run that could never render is clutter in `runs` and the gallery)."""
        if self._injected_engine is None and self._resolve_engine_name(profile) == "diffusers":
            from reverie.render.weights import resolve_weights

            resolve_weights(profile, self.model_path)

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
            progress(Loading(what="engine", profile=profile.name))
        name = self._resolve_engine_name(profile)
        key = (name, profile.name)
        with self._parts_lock:
            if key in self._engines:
                return self._engines[key]
            options = dict(self.engine_options)
            if name == "tiny":
                options.setdefault("models_dir", str(self.home / "models"))
                options.setdefault("profile", profile.name)  # a tiny model of the profile's own family
                self._say_embedded(progress, profile)
            elif name == "diffusers":
                options.update(profile=profile.name, model_path=self.model_path)
            elif name == "comfyui":
                options.setdefault("profile", profile.name)
            with deferred_interrupt():  # its imports run native code a Ctrl-C must not cut (see interrupts)
                self._engines[key] = make_engine(name, **options)
            if self.previews and hasattr(self._engines[key], "preview_every"):
                from reverie.render.preview import PREVIEW_EVERY

                self._engines[key].preview_every = PREVIEW_EVERY
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

    def _say_embedded(self, progress: ProgressFn, profile: Profile) -> None:
        """One line naming the embedded parts actually in use: the tiny engine, and the formula
        expander and heuristic scorer unless something better is configured."""
        if self._embedded_said:
            return
        parts = [f"tiny random-weight {profile.traits.label} engine"]
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
                  and profile is not None and profile.traits.chat_encoder
                  and not (self.model_path and (Path(self.model_path) / "reverie-tiny.json").exists())):
            return None  # the tiny engine's random encoder is no language model: formula it is
        label = f"the {name} {getattr(profile, 'name', '')} text encoder".replace("  ", " ")
        # The weights are the engine's: after each call only the small wrapper around them goes.
        return LocalLLM(settings, encoder_loader(load), backend="encoder", model=label, record=record,
                        progress=progress, keep_loaded=False, runner=lambda fn: self.worker.call(engine, fn))

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

    def close(self) -> None:
        for engine in self.engines():
            engine.close()
        if self._scorer is not None:
            self._scorer.close()
