"""The Python API: `Studio(home=...).make("a fox in the rain", n=4, rounds=2)`.

The CLI is a thin layer over this class, so both ways in behave the same.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from reverie.config import load_config, resolve_home
from reverie.orchestrator.requests import check_knobs, validate_request
from reverie.orchestrator.curation import SignatureCache
from reverie.orchestrator.parts import Parts
from reverie.orchestrator.run import MakeResult, Run
from reverie.orchestrator.worker import EngineWorker
from reverie.profiles import DEFAULT_PROFILE, Profile, get_profile
from reverie.render.registry import ENGINES
from reverie.store.db import Store
from reverie.types import Event, Notice, ProgressFn, Reference, Render, Request, Result, ReverieError


def _ray_worker(address: str, workers: Optional[int]):
    from reverie.orchestrator.ray_pool import ray_worker

    return ray_worker(address, workers=workers)


class Studio:
    """One home, one engine worker with its warm engine, one scorer, many runs.

    Every way in opens its runs with `open_run` (make, each idea of a batch, each chat turn,
    each serve request) and takes their best with `best`. The parts (engine, scorer, prompt
    writer, VLM judge) are built by orchestrator/parts.py from the configuration; any can be
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
        self.profile_name = profile
        self.progress = progress
        self._cache: dict[str, Any] = {}
        self._exit = contextlib.ExitStack()  # what closes with the studio (the checkpoint connection)
        self._parts_lock = threading.RLock()
        self.worker = EngineWorker() if ray is None else _ray_worker(ray, workers)
        self._notified: set[str] = set()
        self.notices: list[str] = []
        self.signatures = SignatureCache()  # of the renders this studio stored: best() reads them
        self.clip_embeddings = SignatureCache()  # CLIP image embeddings of those a CLIP scorer scored

        self.config = load_config(self.home, config)
        self.parts = Parts(home=self.home, store=self.store, config=self.config, worker=self.worker, notice=self.notice,
                           engine=engine, scorer=scorer, expander=expander, critic=critic, model_path=model_path,
                           engine_options=engine_options, llm_url=llm_url, llm_model=llm_model,
                           llm_timeout=llm_timeout, llm_path=llm_path)
        # What the studio was asked for, as the CLI and chat read them.
        self.engine_name, self.scorer_name = self.parts.engine_name, self.parts.scorer_name
        self.model_path, self.engine_options = model_path, self.parts.engine_options
        self.llm_url, self.llm_model, self.llm_timeout, self.llm_path = llm_url, llm_model, llm_timeout, llm_path

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
        progress(Notice(message=message))

    @property
    def previews(self) -> bool:
        """Live previews while images render: the web studio turns them on, the CLI leaves them off."""
        return self.parts.previews

    @previews.setter
    def previews(self, on: bool) -> None:
        self.parts.previews = on

    def style(self, style: Optional[str | tuple[str, str, str]]) -> Optional[tuple[str, str, str]]:
        """A style name resolved from reverie.toml's [styles] (a resolved one passes through)."""
        if style is None or isinstance(style, (tuple, list)):
            return tuple(style) if style else None
        from reverie.orchestrator.requests import resolve_style

        return resolve_style(self.config.get("styles", {}), style)

    def style_names(self) -> list[str]:
        styles = self.config.get("styles", {})
        return sorted(k for k, v in styles.items() if isinstance(v, dict)) if isinstance(styles, dict) else []

    def check_weights(self, profile: Profile) -> None:
        """Weights that are not here are one line before a run is created (see Parts.check_weights)."""
        self.parts.check_weights(profile)

    def engine_for(self, profile: Profile, progress: ProgressFn):
        """The engine for a profile, built once (cheap: weights load on its first render)."""
        return self.parts.engine_for(profile, progress)

    def scorer(self, progress: ProgressFn, quiet_if_heuristic: bool = False):
        """The studio's one scorer, built once."""
        return self.parts.scorer(progress, quiet_if_heuristic=quiet_if_heuristic)

    def expander_and_critic(self, progress: ProgressFn, engine=None):
        """The studio's prompt writer: (expander, critic), built once (see orchestrator/parts.py)."""
        return self.parts.expander_and_critic(progress, engine)

    def vlm_judge(self, progress: ProgressFn):
        """The [judge] vision model of this studio, or None; built once."""
        return self.parts.vlm_judge(progress)

    def llm_backend(self) -> str:
        """What writes the prompts, as configured: auto, server, encoder, local (a --llm-path folder) or off."""
        return self.parts.llm_backend()

    # -- runs ------------------------------------------------------------------------------
    def request(self, idea: str, *, n: int = 4, rounds: int = 2, target: Optional[float] = None, aspect: str = "1:1",
                megapixels: float = 1.0, profile: Optional[str] = None,
                references: Sequence[Reference | dict | str] = (), seed: Optional[int] = None,
                shift: Optional[float] = None, blind_steps: int = 0, steps: Optional[int] = None,
                max_seconds: Optional[float] = None, max_renders: Optional[int] = None,
                embed_noise: float = 0.0, diversity: Optional[float] = None, search: str = "seeds",
                cfg: Optional[float] = None, negative: Optional[str] = None, sampler: Optional[str] = None,
                exact: bool = False,
                revises: Optional[tuple[str, str, str]] = None,
                style: Optional[str | tuple[str, str, str]] = None, handoff_steps: int = 0,
                preview_steps: int = 0) -> Request:
        """A checked Request (what `open_run` takes); the options are `make`'s. A bad value is
        one ReverieError line naming the fix."""
        refs = tuple(r if isinstance(r, Reference) else Reference(**r) if isinstance(r, dict) else Reference(str(r))
                     for r in references or ())
        return validate_request(Request(idea=idea, n=n, rounds=rounds, target=target, aspect=aspect,
                                        megapixels=megapixels, profile=profile or self.profile_name, references=refs,
                                        seed=seed, shift=shift, blind_steps=blind_steps, steps=steps,
                                        max_seconds=max_seconds, max_renders=max_renders, embed_noise=embed_noise,
                                        diversity=diversity, search=search, cfg=cfg, negative=negative,
                                        sampler=sampler, exact=exact, revises=tuple(revises) if revises else None, style=self.style(style),
                                        handoff_steps=handoff_steps, preview_steps=preview_steps))

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
            Run: its id, request, first seed, whether it resumed; `drive`, `loop`, `best`.
        """
        from reverie.agents.references import load_reference
        from reverie.store.recovery import claim_run, hold_run

        progress = progress or self.progress or (lambda e: None)
        req = validate_request(request)
        for ref in req.references:  # a bad reference is one line, before any engine loads
            load_reference(ref.path)
        # Weights never pulled: one line, and no run made; checked before the checkpointer, whose
        # import (langgraph) would take longer than the whole answer should.
        self.check_weights(get_profile(req.profile))
        self.checkpointer()  # a damaged checkpoint file is named now: before the engine loads or a run row exists
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
             diversity: Optional[float] = None, search: str = "seeds",
             cfg: Optional[float] = None, negative: Optional[str] = None, sampler: Optional[str] = None,
             exact: bool = False, revises: Optional[tuple[str, str, str]] = None, style: Optional[str] = None,
             handoff_steps: int = 0, preview_steps: int = 0,
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
            diversity: how much the kept set trades score for variety (maximal marginal
                relevance, 0-2): 0 keeps the top k by score; None: the home's [scoring]
                diversity, 0.3 by default (docs/portfolio.md).
            search: "seeds" re-rolls seeds each round; "noise" searches the low-frequency part of
                the initial noise, refitted to the best candidates so far (in-process Z-Image only).
            cfg: the CFG scale as ComfyUI and A1111 write it (1-30; 1 is none); None: the profile's.
            negative: the negative prompt (needs CFG above 1); None: the profile's.
            sampler: euler, dpmpp_2m_karras, ... (flow-matching models: euler); None: the profile's.
            exact: render the idea verbatim: no expansion, no critic rewrite.
            revises: (idea, prompt, negative) of a chat turn whose prompt this run revises.
            style: a named style of reverie.toml ([styles.NAME]: prompt = "{prompt}, ...", negative).
            handoff_steps: the first steps on the profile's undistilled base model (z-image for
                z-image-turbo), the rest on the profile's: more varied seeds (0-10; 1 is typical).
            preview_steps: with search "noise", judge each seed's noise candidates on a preview of
                this many steps and render only the best in full; the previews count in the
                render budget by their step share (docs/portfolio.md).
            progress: called with every progress Event; None: the studio's.
            stop: set it (a server whose client hung up) to end the run between images.

        Returns:
            MakeResult: the run id, its best renders (the VLM judge's pick first), every render,
            why it stopped, and the notices said along the way.
        """
        progress = progress or self.progress or (lambda e: None)
        req = self.request(idea, n=n, rounds=rounds, target=target, aspect=aspect, megapixels=megapixels,
                           profile=profile, references=references, seed=seed, shift=shift, blind_steps=blind_steps,
                           steps=steps, max_seconds=max_seconds, max_renders=max_renders, embed_noise=embed_noise,
                           diversity=diversity, search=search, cfg=cfg, negative=negative, sampler=sampler,
                           exact=exact, revises=revises, style=style, handoff_steps=handoff_steps,
                           preview_steps=preview_steps)
        with self.open_run(req, progress=progress) as run:
            final = run.drive(progress=progress, stop=stop)
        return run.result(k=min(req.n, 4), stop_reason=final.get("stop_reason", ""))

    def edit(self, source: str, instruction: str, *, n: int = 4, rounds: int = 2, target: Optional[float] = None,
             mask: Optional[str] = None, strength: float = 0.6, profile: Optional[str] = None,
             seed: Optional[int] = None, steps: Optional[int] = None, max_seconds: Optional[float] = None,
             max_renders: Optional[int] = None, progress: Optional[ProgressFn] = None,
             stop: Optional[threading.Event] = None) -> MakeResult:
        """Edit an image: make's loop with every render starting from `source`.

        Args:
            source: a PNG/JPEG/WebP path, or a render id or image sha prefix of this home.
            instruction: what to change ("make it night").
            mask: a mask the size of the source, white where it may change (inpainting).
            strength: img2img editors only: how far from the source, (0, 1].
            profile: the editor; None: the first instruction editor whose weights are here, else
                Z-Image Turbo img2img (said in one line). The other options are `make`'s.

        Returns:
            MakeResult, as make's. See reverie/orchestrator/edit.py and docs/edit.md.
        """
        from reverie.orchestrator.edit import edit_run

        return edit_run(self, source, instruction, n=n, rounds=rounds, target=target, mask=mask, strength=strength,
                        profile=profile, seed=seed, steps=steps, max_seconds=max_seconds, max_renders=max_renders,
                        progress=progress, stop=stop)

    def checkpointer(self):
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
        from reverie.orchestrator.curation import clip_embedder, curate, kept_diversity, near_duplicate_threshold

        diversity = kept_diversity(self.store, run_id, self.config)
        # The portfolio measures similarity on CLIP image embeddings where CLIP scored the run.
        embed = clip_embedder(self.store, run_id, self.config, cache=self.clip_embeddings) if diversity > 0 else None
        return curate(self.store, run_id, k, threshold=near_duplicate_threshold(self.config),
                      signatures=self.signatures, fill=fill, diversity=diversity, embed=embed)

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
        yield Result(result=run.result(k=min(req.n, 4), stop_reason=final.get("stop_reason", "")))

    def batch(self, file: str | Path, *, per_prompt: Optional[int] = None, keep: int = 4, hours: Optional[float] = None,
              aspect: str = "1:1", megapixels: float = 1.0, target: Optional[float] = None,
              rounds: Optional[int] = None, n: Optional[int] = None, policy: str = "explore",
              retry_failed: bool = False, progress: Optional[ProgressFn] = None, controls: Optional[dict] = None):
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
            controls: `make`'s steps, cfg, negative, sampler and exact for every idea (a JSONL line's own win).

        Returns:
            BatchResult: per idea its run, renders and kept images; the contact sheet's path.
        """
        from reverie.orchestrator.batch import BatchOptions, run_batch

        options = BatchOptions(per_prompt=per_prompt, keep=keep, hours=hours, profile=self.profile_name,
                               engine=self.engine_name, aspect=aspect, megapixels=megapixels, target=target,
                               rounds=rounds, n=n, policy=policy, controls=dict(controls or {}))
        return run_batch(self, file, options, progress=progress or self.progress or (lambda e: None),
                         retry_failed=retry_failed)

    def chat(self, session: str, message: str, *, n: Optional[int] = None, rounds: Optional[int] = None,
             aspect: Optional[str] = None, megapixels: Optional[float] = None, target: Optional[float] = None,
             profile: Optional[str] = None, progress: Optional[ProgressFn] = None,
             stop: Optional[threading.Event] = None, interpreter: Any = None,
             on_open: Optional[Callable[[Run], None]] = None, seed: Optional[int] = None,
             steps: Optional[int] = None, cfg: Optional[float] = None, negative: Optional[str] = None,
             sampler: Optional[str] = None, exact: Optional[bool] = None, style: Optional[str] = None,
             handoff_steps: Optional[int] = None, abandon: Optional[threading.Event] = None):
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
            abandon: set (with `stop`) when the process stops: the turn is not recorded and
                RenderStopped is raised, so the turn can be made again later, resuming its run.
            seed, steps, cfg, negative, sampler, exact, style, handoff_steps: `make`'s controls for this turn (None: the
                profile's, or what the last turn used; a seed given here replaces the turn's fresh one).

        Returns:
            ChatTurn: the turn's number, run, best images and how the message was read.
        """
        from reverie.orchestrator.chat import chat_turn

        options = {"n": n, "rounds": rounds, "aspect": aspect, "megapixels": megapixels, "target": target,
                   "profile": profile, "seed": seed, "steps": steps, "cfg": cfg, "negative": negative,
                   "sampler": sampler, "exact": exact, "style": style, "handoff_steps": handoff_steps}
        return chat_turn(self, session, message, progress=progress or self.progress or (lambda e: None),
                         interpreter=interpreter, stop=stop, on_open=on_open, abandon=abandon, **options)

    def close(self) -> None:
        self.worker.close()
        self.parts.close()
        self._exit.close()
        self.store.close()

    def __enter__(self) -> "Studio":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
