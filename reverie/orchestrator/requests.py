"""Checking a request before anything heavy runs, and the size it renders at."""

from __future__ import annotations

import unicodedata

from reverie.orchestrator.noise_search import SEARCHES
from reverie.profiles import HANDOFF_BASES, Profile, get_profile, handoff_base
from reverie.render.resolution import check_megapixels, parse_aspect, size_for
from reverie.types import CONTROL_KINDS, Request, ReverieError

MAX_EMBED_NOISE = 0.5  # a share of the embeddings' standard deviation; more drowns the prompt
MAX_N = 1024
MAX_ROUNDS = 100
MAX_IDEA_CHARS = 4000
# Seeds are stored as SQLite integers (signed 64-bit) and a run adds one per image; 2^62 leaves room.
MAX_SEED = 2**62


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
    profile = get_profile(req.profile)
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
    if req.max_renders is not None and req.max_renders < 1:
        raise ReverieError(f"the render budget must be at least 1 (got {req.max_renders})")
    if req.steps is not None and not (1 <= req.steps <= 200):
        raise ReverieError(f"steps must be between 1 and 200 (got {req.steps})")
    if not (0 <= req.blind_steps <= 10):
        raise ReverieError(f"blind steps must be between 0 and 10 (got {req.blind_steps})")
    if req.shift is not None and not (0.5 <= req.shift <= 20.0):
        raise ReverieError(f"shift must be between 0.5 and 20 (got {req.shift}): Z-Image Turbo ships 3, try 6-7 for variety")
    if req.shift is not None and profile.shift is None:
        raise ReverieError(f"--shift is the flow-matching models' knob; {profile.name} has none: "
                           "leave it out, or use --blind-steps / --embed-noise for variety")
    if req.diversity is not None and not (0.0 <= req.diversity <= 2.0):
        raise ReverieError(f"--diversity {req.diversity}: use 0 (plain top-K by score) to 2; 0.3 is the default")
    if not (0.0 <= req.embed_noise <= MAX_EMBED_NOISE):
        raise ReverieError(f"embedding noise must be between 0 and {MAX_EMBED_NOISE} (got {req.embed_noise}): "
                           "it is a share of the embeddings' spread, e.g. --embed-noise 0.1")
    if not isinstance(req.handoff_steps, int) or not (0 <= req.handoff_steps <= 10):
        raise ReverieError(f"handoff steps must be between 0 and 10 (got {req.handoff_steps}): "
                           "1 or 2 first steps on the base model is typical")
    if req.handoff_steps and handoff_base(profile.name) is None:
        pairs = ", ".join(f"{d} (base {b})" for d, b in HANDOFF_BASES.items())
        raise ReverieError(f"{profile.name} has no base model of its architecture to hand steps from: "
                           f"--handoff-steps works on {pairs}")
    if req.handoff_steps and req.handoff_steps >= (req.steps or profile.steps):
        raise ReverieError(f"--handoff-steps {req.handoff_steps} leaves no step of {req.steps or profile.steps} to the "
                           f"distilled model: use at most {(req.steps or profile.steps) - 1}")
    if req.search not in SEARCHES:
        raise ReverieError(f"unknown search {req.search!r}: use --search seeds (re-roll seeds) or --search noise")
    if req.preview_steps and req.search != "noise":
        raise ReverieError("--preview-steps picks among noise candidates: add --search noise, or leave it out")
    if req.preview_steps and not (1 <= req.preview_steps < (req.steps or profile.steps)):
        raise ReverieError(f"--preview-steps {req.preview_steps}: use 1 to {(req.steps or profile.steps) - 1}, fewer "
                           f"than the full render's {req.steps or profile.steps} steps")
    check_controls(req, profile)
    for ref in req.references:
        if ref.control not in CONTROL_KINDS:
            raise ReverieError(f"unknown control kind {ref.control!r}: use one of {', '.join(CONTROL_KINDS)}")
    return Request(**{**req.__dict__, "idea": idea})


MAX_CFG = 30.0
MAX_NEGATIVE_CHARS = 2000


def check_controls(req: Request, profile: Profile) -> None:
    """The hand-set controls (CFG, negative, sampler): a value the profile cannot honour is refused in one line."""
    from reverie.render.families import COMFY_ONLY_SAMPLERS, SAMPLERS

    if req.cfg is not None and not (1.0 <= req.cfg <= MAX_CFG):
        raise ReverieError(f"CFG must be between 1 and {MAX_CFG:g} as ComfyUI writes it (got {req.cfg:g}): 1 is no "
                           f"guidance; {profile.name} uses {profile.traits.cfg_scale(profile.guidance):g}")
    if req.negative is not None and len(req.negative) > MAX_NEGATIVE_CHARS:
        raise ReverieError(f"the negative prompt is {len(req.negative)} characters long: keep it under {MAX_NEGATIVE_CHARS}")
    if req.negative:
        guidance = profile.traits.guidance(req.cfg) if req.cfg is not None else profile.guidance
        if not profile.traits.runs_cfg(guidance):
            cfg = profile.traits.cfg_scale(guidance)
            raise ReverieError(f"a negative prompt needs CFG above 1 and {profile.name} runs at CFG {cfg:g}: pass "
                               f"--cfg 1.5 (or more) with --negative, or leave --negative out")
    if req.sampler is not None:
        if req.sampler not in SAMPLERS and req.sampler not in COMFY_ONLY_SAMPLERS:
            raise ReverieError(f"unknown sampler {req.sampler!r}: use one of {', '.join([*SAMPLERS, *COMFY_ONLY_SAMPLERS])}")
        if profile.traits.flow and req.sampler not in ("euler", *COMFY_ONLY_SAMPLERS):
            raise ReverieError(f"sampler {req.sampler} does not apply to {profile.name} (a flow-matching model): "
                               "use euler, or leave --sampler out")


def resolve_style(styles: dict, name: str) -> tuple[str, str, str]:
    """[styles.NAME] of reverie.toml -> (name, prompt template, negative); an unknown name is one line."""
    style = styles.get(name) if isinstance(styles, dict) else None
    if not isinstance(style, dict):
        known = ", ".join(sorted(styles)) if isinstance(styles, dict) and styles else "none yet"
        raise ReverieError(f"unknown style {name!r} (reverie.toml defines {known}): add [styles.{name}] with "
                           f'prompt = "{{prompt}}, in the style of ..." to reverie.toml')
    template, negative = style.get("prompt", "{prompt}"), style.get("negative", "")
    if not isinstance(template, str) or "{prompt}" not in template or not isinstance(negative, str):
        raise ReverieError(f'[styles.{name}] in reverie.toml: prompt must be text holding {{prompt}} (where the '
                           f'written prompt goes), e.g. prompt = "{{prompt}}, watercolor"; negative, text')
    return name, template, negative


def styled(prompt: str, negative: str, style: tuple[str, str, str]) -> tuple[str, str]:
    """The prompt poured into the style's template, once (a critic's rewrite of a styled prompt keeps it)."""
    _, template, extra = style
    before, _, after = template.partition("{prompt}")
    if before.strip() and before.strip() in prompt or after.strip() and after.strip() in prompt:
        return prompt, negative
    negative = ", ".join(part for part in (negative, extra) if part)
    return before + prompt + after, negative


def spec_controls(req: Request, profile: Profile) -> dict:
    """The RenderSpec fields the request's controls set (diffusers guidance from ComfyUI's CFG)."""
    out: dict = {}
    if req.cfg is not None:
        out["guidance"] = profile.traits.guidance(req.cfg)
    if req.negative is not None:
        out["negative"] = req.negative
    if req.sampler is not None:
        out["sampler"] = req.sampler
    return out


def check_knobs(req: Request, engine) -> None:
    """A variety knob the engine cannot honour is refused, never silently dropped."""
    if req.embed_noise and not getattr(engine, "embed_noise", False):
        raise ReverieError(f"the {engine.name} engine cannot add noise to the text embeddings: leave --embed-noise "
                           "out, or render in-process (--engine diffusers)")
    if req.search == "noise" and not getattr(engine, "noise_channels", None):
        raise ReverieError(f"the {engine.name} engine cannot take initial noise for {req.profile}: leave --search noise "
                           "out, or render a Z-Image profile in-process (--engine diffusers)")
    if req.search == "noise" and (req.source is not None or any(r.control == "img2img" for r in req.references)):
        raise ReverieError("an edit or img2img reference starts from the image, not from noise: leave --search noise out")
    if req.handoff_steps:
        check_handoff(req, engine)
    from reverie.render.families import COMFY_ONLY_SAMPLERS

    if req.sampler in COMFY_ONLY_SAMPLERS and engine.name != "comfyui":
        raise ReverieError(f"sampler {req.sampler} exists only in ComfyUI: use --engine comfyui, or another sampler")


def check_handoff(req: Request, engine) -> None:
    """--handoff-steps where the engine, the profile or the request cannot: one line, before any run."""
    refusal = getattr(engine, "handoff_refusal", None)
    if refusal is None:  # ComfyUI graphs and Ray lanes run one model per render
        raise ReverieError(f"the {engine.name} engine cannot hand steps from a base model to {req.profile}: leave "
                           "--handoff-steps out, or render in-process (--engine diffusers)")
    reason = refusal()
    if reason:
        raise ReverieError(reason)
    if req.source is not None or req.references:
        raise ReverieError("--handoff-steps starts from noise: leave it out of edits and reference renders")
    profile = get_profile(req.profile)
    guidance = spec_controls(req, profile).get("guidance", profile.guidance)
    if profile.traits.runs_cfg(guidance):
        raise ReverieError(f"--handoff-steps runs {profile.name} without CFG after the base's steps: leave --cfg out, "
                           "or --handoff-steps")


def render_size(req: Request, profile: Profile, engine) -> tuple[int, int]:
    """Width and height for a request: the profile's multiple, capped by the profile and by the
    engine where it has its own cap (the tiny engine's `max_side`)."""
    if req.source is not None:  # an edit renders at its source's size
        from reverie.orchestrator.edit import edit_size

        return edit_size(req.source, profile, engine)
    max_side = min(profile.max_side, getattr(engine, "max_side", None) or profile.max_side)
    return size_for(req.aspect, req.megapixels, profile.multiple, max_side, buckets=profile.traits.buckets)
