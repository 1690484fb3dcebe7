"""How the diffusers engine edits: a render that starts from a source image (RenderSpec.source).

Two kinds of editor (reverie.profiles.EDITORS):
- instruction editors (FLUX.2 [klein], Qwen-Image-Edit-2511, FLUX.1 Kontext) read the source as a
  reference image and the prompt as what to change; their pipeline class is the profile's own, so
  the loaded pipeline edits as it is; a mask runs the family's inpainting class where diffusers
  has one, built from the same components.
- img2img (Z-Image Turbo, where no instruction editor is present) denoises the source part-way
  towards the prompt (`strength`); with a mask, ZImageInpaintPipeline repaints only inside it.
"""

from __future__ import annotations

from typing import Any, Optional

from reverie.profiles import EDITORS, Editor, Profile
from reverie.render.families import ADAPTERS, FamilyAdapter
from reverie.types import ReverieError, Source


class EditOnlyAdapter(FamilyAdapter):
    """A family reverie runs only as an editor here: its prompts go to the pipeline as text
    (encoded by the pipeline itself), and text-to-image is refused in one line."""

    def __init__(self, family: str):
        self.family = family

    def encode(self, pipe, prompt, negative, cfg, clip_skip, device):
        raise ReverieError(f"text-to-image on the {self.family} family is not in this reverie: "
                           f"use it to edit (`reverie edit IMAGE \"INSTRUCTION\"`)")


def _edit_only_families() -> set[str]:
    from reverie.profiles import PROFILES

    return {PROFILES[e.profile].family for e in EDITORS.values() if e.profile in PROFILES}


# An editor's family without a text-to-image adapter gets one that refuses text-to-image in one line.
for _family in _edit_only_families():
    ADAPTERS.setdefault(_family, EditOnlyAdapter(_family))


def adapter_of(profile: Profile) -> FamilyAdapter:
    """The diffusers adapter of a profile's family, the editing-only families included."""
    return ADAPTERS[profile.family]


def editor_of(profile: Profile) -> Editor:
    editor = EDITORS.get(profile.name)
    if editor is None:
        from reverie.profiles import INSTRUCTION_EDITORS

        raise ReverieError(f"{profile.name} cannot edit images: use --profile {' or '.join(INSTRUCTION_EDITORS)}, "
                           f"or z-image-turbo (img2img)")
    return editor


def variant_name(editor: Editor, source: Source) -> str:
    """Which pipeline a source spec runs on: the loaded one, or a variant built from its parts."""
    if source.mask_path:
        if not editor.inpaint_pipeline:
            raise ReverieError(f"{editor.profile} has no inpainting pipeline in diffusers: drop --mask, "
                               f"or edit with z-image-turbo")
        return "inpaint"
    return "edit" if editor.kind == "img2img" else "base"


def build_variant(pipe, editor: Editor, name: str):
    import diffusers

    if name == "base":
        return pipe
    cls = editor.inpaint_pipeline if name == "inpaint" else editor.pipeline
    return getattr(diffusers, cls)(**pipe.components)


def load_source(source: Source, width: int, height: int) -> tuple[Any, Optional[Any]]:
    """The source (RGB) and its mask (L, white = change) at the render's size. A source that
    disappeared since the run began fails the run with its reason."""
    from PIL import Image, ImageOps

    def read(path: str, what: str, mode: str, resample):
        try:
            with Image.open(path) as im:
                return ImageOps.fit(im.convert(mode), (width, height), resample)
        except (OSError, ValueError) as e:
            raise ReverieError(f"the {what} {path} cannot be read any more ({str(e).splitlines()[0]}): "
                               f"restore it and run the same command to continue") from None

    image = read(source.image_path, "source image", "RGB", Image.Resampling.LANCZOS)
    mask = read(source.mask_path, "mask", "L", Image.Resampling.NEAREST) if source.mask_path else None
    return image, mask


def instruction_call(editor: Editor, spec, n: int, image, mask) -> dict[str, Any]:
    """Keyword arguments for an instruction editor's call on a batch of n seeds of one spec."""
    kwargs: dict[str, Any] = {"prompt": [spec.prompt] * n}
    if editor.pipeline == "QwenImageEditPlusPipeline":
        # Qwen-Image runs true CFG with a negative prompt; guidance_scale is its (unused) distilled knob.
        kwargs.update(image=[image], negative_prompt=[spec.negative or " "] * n, true_cfg_scale=spec.guidance)
    elif editor.pipeline == "Flux2KleinPipeline":
        kwargs.update(image=[image], guidance_scale=spec.guidance)  # a list: the references, not a batch
    else:  # FLUX.1 Kontext
        # The source is already fitted to the request's size. The pipeline would otherwise render at
        # ~1 MP whatever height/width say (max_area) and resize the reference to its preferred list.
        kwargs.update(image=image, guidance_scale=spec.guidance, max_area=spec.width * spec.height, _auto_resize=False)
    if mask is not None:
        kwargs.update(mask_image=mask, image=image)
    return kwargs


def img2img_call(source: Source, n: int, image, mask) -> dict[str, Any]:
    # One copy per seed: given a single image, the pipeline encodes it with the batch's first
    # generator, and every image's pixels would depend on which seed came first in its batch.
    kwargs: dict[str, Any] = {"image": [image] * n, "strength": float(source.strength)}
    if mask is not None:
        kwargs["mask_image"] = [mask] * n
    return kwargs


def paste_back(images: list, source, mask) -> list:
    """Outside the mask, the source's own pixels: the pipelines decode the whole frame, and a VAE
    round trip alone would change what the person asked to keep."""
    if mask is None:
        return images
    from PIL import Image

    return [Image.composite(im.convert("RGB"), source, mask) if im is not None else im for im in images]


def comfy_spec(spec):
    """The spec a ComfyUI workflow renders for an edit. A Z-Image img2img edit is the workflow
    reverie builds for an img2img reference, so the source travels as that control image; the
    instruction editors and inpainting keep their source (comfy_workflow.build_edit_workflow)."""
    from reverie.profiles import EDITORS
    from reverie.types import Control

    if spec.source is None:
        return spec
    editor = EDITORS.get(spec.profile)
    if editor is None:
        raise ReverieError(f"{spec.profile} cannot edit images: use --profile z-image-turbo or an instruction editor")
    if editor.kind != "img2img" or spec.source.mask_path:
        return spec
    return spec.with_(control=Control(kind="img2img", image_sha=spec.source.image_sha,
                                      image_path=spec.source.image_path, strength=spec.source.strength))


def comfy_source_pngs(spec) -> list[tuple[str, bytes]]:
    """An edit's source (and mask) as ComfyUI uploads: fitted to the render's size as the
    diffusers engine fits them, named by content and size so each server gets each once."""
    import io

    image, mask = load_source(spec.source, spec.width, spec.height)
    out = []
    for im, sha, what in ((image, spec.source.image_sha, "source"), (mask, spec.source.mask_sha, "mask")):
        if im is None:
            continue
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        out.append((f"reverie_{what}_{(sha or '')[:16]}_{spec.width}x{spec.height}.png", buf.getvalue()))
    return out
