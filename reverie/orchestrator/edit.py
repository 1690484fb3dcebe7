"""Edit runs: the loop's renders start from a source image (a file, or an image of the home).

An edit is one more kind of run: `Request.source` names the image, the idea is the instruction,
and every spec carries the source (RenderSpec.source), so the engine edits instead of drawing
from noise and the store records the image parent. Everything a person can get wrong (a missing
or unreadable source, a mask of another size, an instruction with no words, a source bigger
than the editor takes) is one line here, before any model loads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from reverie.profiles import EDITORS, FALLBACK_EDITOR, INSTRUCTION_EDITORS, Editor, Profile, get_profile
from reverie.types import Expansion, Request, ReverieError, Source

DEFAULT_STRENGTH = 0.6  # img2img: how far from the source; instruction editors ignore it
NOT_AN_INSTRUCTION_EDITOR = ("editing with Z-Image Turbo img2img{inpaint}: it is not an instruction editor (it repaints "
                             "towards the words, it does not follow them); `reverie models pull flux2-klein-4b` "
                             "gets one")


def check_instruction(instruction: str) -> str:
    text = " ".join(str(instruction or "").split())
    if not any(ch.isalnum() for ch in text):
        raise ReverieError('the instruction has no words: say what to change, e.g. reverie edit photo.png "make it night"')
    return text


def _open_image(path: str, what: str):
    """(width, height) of a readable image file, or one line saying what is wrong with it."""
    from PIL import Image

    from reverie.store.lineage import check_regular_file

    if not os.path.lexists(path):
        raise ReverieError(f"the {what} {path} does not exist: give a PNG, JPEG or WebP file, or a render id / sha prefix "
                           "of an image in this home")
    check_regular_file(path)
    try:
        with Image.open(path) as im:
            if im.format not in ("PNG", "JPEG", "WEBP"):
                raise ReverieError(f"the {what} {path} is a {im.format} file: give a PNG, JPEG or WebP")
            im.load()
            return im.size
    except Image.DecompressionBombError:
        raise ReverieError(f"the {what} {path} claims to be a gigantic image: reverie will not open it") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ReverieError(f"the {what} {path} is not a readable image ({str(e).splitlines()[0]}): "
                           "give an intact PNG, JPEG or WebP") from None


def resolve_source(store, source: str) -> tuple[str, Optional[int]]:
    """(path of the source file, render id when it is a render of this home) for a path, a render
    id or an image sha prefix."""
    from reverie.store.lineage import find_renders

    key = str(source or "").strip()
    if not key:
        raise ReverieError("no source image: give a PNG/JPEG/WebP path, or a render id or sha prefix from this home")
    if os.path.lexists(key):
        _open_image(key, "source image")
        rows = [r for r in find_renders(store, key) if r["status"] == "ok"]
        return key, (rows[0]["id"] if rows else None)
    looks_like_id = key.isdigit() or (len(key) >= 6 and all(c in "0123456789abcdef" for c in key.lower()))
    if not looks_like_id:
        raise ReverieError(f"the source image {key} does not exist: give a PNG, JPEG or WebP file, or a render id / "
                           "sha prefix of an image in this home")
    rows = [r for r in find_renders(store, key) if r["status"] == "ok"]
    if not rows:
        raise ReverieError(f"no image of this home matches {key!r}: `reverie runs` and `reverie show RUN` list them")
    if len(rows) > 1:
        raise ReverieError(f"{key!r} matches {len(rows)} images: give more characters of the hash")
    path = str(store.home / rows[0]["path"])
    _open_image(path, "source image")
    return path, rows[0]["id"]


def choose_editor(profile: Optional[str], weights_present) -> Profile:
    """The profile an edit runs on: the one asked for (it must be able to edit), or the first
    instruction editor whose weights are here, or Z-Image img2img."""
    if profile:
        chosen = get_profile(profile)
        if chosen.name not in EDITORS:
            raise ReverieError(f"{chosen.name} cannot edit images: use --profile {' or '.join(INSTRUCTION_EDITORS)}, "
                               f"or {FALLBACK_EDITOR} (img2img)")
        return chosen
    for name in INSTRUCTION_EDITORS:
        if weights_present(get_profile(name)):
            return get_profile(name)
    return get_profile(FALLBACK_EDITOR)


def build_source(store, source: str, instruction: str, editor: Editor, *, mask: Optional[str] = None,
                 strength: float = DEFAULT_STRENGTH) -> Source:
    """Check the source (and mask) and keep a copy of each in the home, content-addressed, so the
    edit can be reproduced as long as the home is there; a source from the home is used in place."""
    if not 0.0 < float(strength) <= 1.0:
        raise ReverieError(f"strength must be above 0 and at most 1 (got {strength}): 0.6 keeps the composition, "
                           "0.9 keeps little")
    path, render_id = resolve_source(store, source)
    width, height = _open_image(path, "source image")
    if max(width, height) > editor.max_source_side:
        raise ReverieError(f"the source image is {width}x{height}: {editor.profile} takes at most {editor.max_source_side} "
                           f"px a side; resize it first")
    if min(width, height) < editor.min_source_side:
        raise ReverieError(f"the source image is {width}x{height}: {editor.profile} takes at least "
                           f"{editor.min_source_side} px a side; upscale it first")
    sha, kept = _keep(store, path, "source")
    mask_sha, mask_kept = "", ""
    if mask:
        size = _open_image(mask, "mask")
        if size != (width, height):
            raise ReverieError(f"the mask is {size[0]}x{size[1]} but the source is {width}x{height}: "
                               "give a mask of the same size (white = change)")
        mask_sha, mask_kept = _keep(store, mask, "mask")
    return Source(image_sha=sha, image_path=kept, width=width, height=height, instruction=instruction,
                  render_id=render_id, strength=float(strength), mask_sha=mask_sha, mask_path=mask_kept)


def _keep(store, path: str, kind: str) -> tuple[str, str]:
    """The file's sha256 and where the home keeps its bytes (a render of the home stays where it is)."""
    from reverie.store.pngmeta import file_sha256

    p = Path(path).resolve()
    try:
        p.relative_to(store.images_dir.resolve())
        return file_sha256(p), str(p)
    except ValueError:
        pass
    sha, kept = store.add_control(None, kind, str(p), file_sha256(p), p.read_bytes())
    return sha, str(kept)


def edit_size(source: Source, profile: Profile, engine) -> tuple[int, int]:
    """The source's own size, scaled down to fit the profile and engine, rounded to the model's multiple."""
    max_side = min(profile.max_side, getattr(engine, "max_side", None) or profile.max_side)
    scale = min(1.0, max_side / max(source.width, source.height))
    m = profile.multiple

    def side(x: int) -> int:
        return max(m, int(round(x * scale / m)) * m)

    return side(source.width), side(source.height)


def edit_expansion(request: Request, store, profile: Profile, instruction: Optional[str] = None) -> Expansion:
    """The prompt of an edit round. An instruction editor gets the instruction as it was given; an
    img2img editor repaints towards a description, so where the source is a render of this home
    its own prompt leads and the instruction follows."""
    source = request.source
    instruction = instruction or source.instruction or request.idea
    editor = EDITORS.get(profile.name)
    if editor is not None and editor.kind == "img2img" and source.render_id is not None:
        row = store.render_row(source.render_id)
        prompt = next((p["text"] for p in store.prompts(row["run_id"]) if p["id"] == row["prompt_id"]), "")
        if prompt:  # reworded, not appended: "… perspective. make it night" is no description to repaint towards
            from reverie.agents.reword import reword

            return Expansion(prompt=reword(prompt, instruction), source="user",
                             reason=f"edit of render {source.render_id}: its prompt, reworded for the instruction")
    return Expansion(prompt=instruction, source="user", reason="edit instruction")


def _weights_present(profile: Profile) -> bool:
    """Whether an editor's weights are on this machine (a --model-path names the profile's own)."""
    from reverie.render.weights import resolve_weights

    try:
        resolve_weights(profile, None)
        return True
    except ReverieError:
        return False


def edit_run(studio, source: str, instruction: str, *, progress=None, stop=None, **options: Any):
    """`Studio.edit`: one run of the loop whose renders start from `source`, opened and driven as
    every run is (Studio.open_run). -> MakeResult"""
    progress = progress or studio.progress or (lambda e: None)
    req = edit_request(studio, source, instruction, progress=progress, **options)
    with studio.open_run(req, progress=progress) as run:
        final = run.drive(progress=progress, stop=stop)
    return run.result(k=min(req.n, 4), stop_reason=final.get("stop_reason", ""))


def edit_request(studio, source: str, instruction: str, *, n: int = 4, rounds: int = 2,
                 target: Optional[float] = None, mask: Optional[str] = None, strength: float = DEFAULT_STRENGTH,
                 profile: Optional[str] = None, seed: Optional[int] = None, steps: Optional[int] = None,
                 max_seconds: Optional[float] = None, max_renders: Optional[int] = None, progress=None) -> Request:
    """The checked Request of an edit (what Studio.open_run takes), its source kept in the home;
    every bad input is one line before any model loads, and the editor in use is said."""
    from dataclasses import replace

    progress = progress or studio.progress or (lambda e: None)
    instruction = check_instruction(instruction)
    if studio.parts.engine_name not in ("auto", "tiny", "diffusers", "comfyui"):
        raise ReverieError(f"the {studio.parts.engine_name} engine cannot edit: use tiny, diffusers or comfyui")
    chosen = choose_editor(profile, lambda p: _weights_present(p) if studio.parts.engine_name == "auto"
                           else p.name == studio.profile_name)
    editor = EDITORS[chosen.name]
    if studio.parts.engine_name == "comfyui" and mask and editor.kind != "img2img":
        raise ReverieError(f"inpainting (--mask) with {chosen.name} has no ComfyUI workflow in reverie: drop --mask, "
                           "edit with --engine diffusers, or inpaint with --profile z-image-turbo")
    # Checked before the source is kept in the home: a bad option leaves nothing behind.
    req = studio.request(instruction, n=n, rounds=rounds, target=target, profile=chosen.name, seed=seed, steps=steps,
                         max_seconds=max_seconds, max_renders=max_renders)
    src = build_source(studio.store, source, instruction, editor, mask=mask, strength=strength)
    if editor.kind == "img2img":
        studio.notice(NOT_AN_INSTRUCTION_EDITOR.format(inpaint=" and inpainting" if src.mask_path else ""), progress)
    if getattr(studio.scorer(progress), "clip", None) is None:
        # Said here, on the caller's thread: the scores themselves are made on the render sink's.
        from reverie.scoring.edit_scores import HEURISTIC_NOTE

        studio.notice(HEURISTIC_NOTE, progress)
    return replace(req, source=src)


def with_edit_scores(ctx, specs: list, images: list, scores: list) -> list:
    """Add each edit's own components (reverie.scoring.edit_scores) to its scores; in an edit run
    they make the composite with the usual one. A repair round of a text-to-image run (the loop
    editing its best candidate) keeps the run's composite, so its rounds rank on one scale."""
    from dataclasses import replace

    from reverie.scoring.edit_scores import edit_components, edit_composite

    if not any(s.source is not None for s in specs):
        return scores
    clip = getattr(ctx.scorer, "clip", None)
    out = list(scores)
    for i, (spec, image, s) in enumerate(zip(specs, images, scores)):
        if spec.source is None:
            continue
        source, mask = _source_images(spec)
        caption = _source_caption(ctx.store, spec.source)
        components = edit_components(source, [image], instruction=spec.source.instruction, source_caption=caption,
                                     mask=mask, clip=clip)[0]
        composite = edit_composite(s.composite, components) if ctx.request.source is not None else s.composite
        out[i] = replace(s, values={**s.values, **components}, composite=composite)
    return out


def _source_images(spec):
    from reverie.render.editors import load_source

    return load_source(spec.source, spec.width, spec.height)


def _source_caption(store, source: Source) -> str:
    """What the source shows, where this home knows it: the prompt of the render it is."""
    if source.render_id is None:
        return ""
    try:
        row = store.render_row(source.render_id)
    except Exception:  # a row of another home (an image copied in): no caption
        return ""
    return next((p["text"] for p in store.prompts(row["run_id"]) if p["id"] == row["prompt_id"]), "")


def repair_possible(engine, profile: Profile) -> bool:
    """Whether the loop may repair its best candidate by an edit: an in-process engine (ComfyUI
    edit workflows run only through `reverie edit`) and a profile that can edit."""
    from reverie.render.diffusers_engine import DiffusersEngine

    return isinstance(engine, DiffusersEngine) and profile.name in EDITORS


def repair_step(ctx, scored: list, instruction: str, reason: str) -> dict:
    """The state update that makes the next round edit the run's best candidate so far: its source,
    and the prompt of the edit as a child of the current prompt (an instruction editor reads the
    instruction; img2img repaints towards the candidate's prompt with the fix added)."""
    best = sorted(scored, key=lambda r: (-r.scores.composite, r.id))[0]
    source = Source(image_sha=best.sha256, image_path=best.path, width=best.spec.width, height=best.spec.height,
                    instruction=instruction, render_id=best.id, strength=DEFAULT_STRENGTH)
    editor = EDITORS[ctx.profile.name]
    prompt = instruction if editor.kind == "instruction" else f"{best.prompt.rstrip(' .')}. {instruction}"
    revision = Expansion(prompt=prompt, negative=best.spec.negative, source="critic",
                         reason=f"edit of render {best.id}: {reason}")
    if getattr(ctx.scorer, "clip", None) is None and ctx.notice is not None:
        from reverie.scoring.edit_scores import HEURISTIC_NOTE

        ctx.notice(HEURISTIC_NOTE)
    return {"source": source.to_dict(), "pending_revision": revision.to_dict()}
