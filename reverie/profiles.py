"""Model profiles and model families: the defaults that users of each model rely on. Data, not code.

A family is what every engine and file format must agree on about a kind of model (its CFG
convention, whether it is flow-matching); a profile is one model of a family with its defaults.
Adding a family is one `Family` entry and its profiles here, plus one diffusers adapter in
reverie/render/families.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from reverie.errors import ReverieError


@dataclass(frozen=True)
class Family:
    name: str
    # Flow-matching: the model keeps the scheduler it ships with, and `shift` is its variety knob.
    flow: bool
    # CFG as ComfyUI and A1111 users write it = diffusers guidance + cfg_offset. Z-Image's
    # diffusers guidance 0.0 is CFG 1 (no classifier-free guidance); the others run CFG above 1.
    cfg_offset: float = 0.0
    # The text encoder reads Chinese as well as English, so a prompt may stay in Chinese.
    reads_chinese: bool = False

    def runs_cfg(self, guidance: float) -> bool:
        """Whether a diffusers pipeline of this family runs classifier-free guidance (and so a negative prompt)."""
        return guidance > 1.0 - self.cfg_offset

    def cfg_scale(self, guidance: float) -> float:
        """Diffusers guidance -> the CFG scale ComfyUI and A1111 show."""
        return round(guidance + self.cfg_offset, 3) if self.cfg_offset else guidance

    def guidance(self, cfg_scale: float) -> float:
        """The CFG scale ComfyUI and A1111 write -> diffusers guidance."""
        return round(cfg_scale - self.cfg_offset, 3) if self.cfg_offset else cfg_scale


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family(name="z-image", flow=True, cfg_offset=1.0, reads_chinese=True),
        Family(name="flux", flow=True),
        Family(name="sdxl", flow=False),
        Family(name="sd15", flow=False),
    ]
}


@dataclass(frozen=True)
class Profile:
    name: str
    family: str  # a key of FAMILIES
    pipeline: str  # diffusers pipeline class name
    repo_id: str  # Hugging Face repo with diffusers-format weights
    steps: int
    guidance: float  # in diffusers terms (Z-Image Turbo: 0.0 == ComfyUI CFG 1)
    sampler: str
    shift: Optional[float]  # flow-matching shift, None for UNet models
    multiple: int  # width/height rounded to this
    max_side: int  # each side capped at this
    prompt_style: str  # "natural" | "tags"
    negative: bool  # whether a negative prompt has any effect
    quality_tags: str = ""
    default_negative: str = ""
    clip_skip: int = 1
    comfy_cfg: float = 1.0  # the CFG value a ComfyUI KSampler wants
    comfy_files: dict = field(default_factory=dict)
    # Where `reverie models pull` finds the control net for canny/depth/pose (a single file).
    control_repo: str = ""
    control_file: str = ""
    notes: str = ""

    @property
    def traits(self) -> Family:
        return FAMILIES[self.family]


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in [
        Profile(
            name="z-image-turbo",
            family="z-image",
            pipeline="ZImagePipeline",
            repo_id="Tongyi-MAI/Z-Image-Turbo",
            steps=9,
            guidance=0.0,
            sampler="euler",
            shift=3.0,
            multiple=16,
            max_side=2048,
            prompt_style="natural",
            negative=False,
            comfy_cfg=1.0,
            comfy_files={
                "unet": "z_image_turbo_bf16.safetensors",
                "clip": "qwen_3_4b.safetensors",
                "clip_type": "lumina2",
                "vae": "ae.safetensors",
            },
            control_repo="alibaba-pai/Z-Image-Turbo-Fun-Controlnet-Union",
            control_file="Z-Image-Turbo-Fun-Controlnet-Union.safetensors",
            notes="9 steps = 8 DiT forwards; CFG 1 so no negative; shift 6-7 for variety",
        ),
        Profile(
            name="flux1-schnell",
            family="flux",
            pipeline="FluxPipeline",
            repo_id="black-forest-labs/FLUX.1-schnell",
            steps=4,
            guidance=0.0,
            sampler="euler",
            shift=None,
            multiple=16,
            max_side=1280,
            prompt_style="natural",
            negative=False,
            comfy_files={"unet": "flux1-schnell.safetensors", "clip_type": "flux"},
        ),
        Profile(
            name="flux1-dev",
            family="flux",
            pipeline="FluxPipeline",
            repo_id="black-forest-labs/FLUX.1-dev",
            steps=30,
            guidance=3.5,
            sampler="euler",
            shift=None,
            multiple=16,
            max_side=1280,
            prompt_style="natural",
            negative=False,
            comfy_files={"unet": "flux1-dev.safetensors", "clip_type": "flux"},
        ),
        Profile(
            name="sdxl",
            family="sdxl",
            pipeline="StableDiffusionXLPipeline",
            repo_id="stabilityai/stable-diffusion-xl-base-1.0",
            steps=40,
            guidance=6.0,
            sampler="dpmpp_2m_karras",
            shift=None,
            multiple=64,
            max_side=1536,
            prompt_style="tags",
            negative=True,
            quality_tags="masterpiece, best quality, highly detailed",
            default_negative="lowres, worst quality, low quality, blurry, jpeg artifacts, watermark, signature, text, deformed",
            comfy_cfg=6.0,
            comfy_files={"checkpoint": "sd_xl_base_1.0.safetensors"},
        ),
        Profile(
            name="pony",
            family="sdxl",
            pipeline="StableDiffusionXLPipeline",
            repo_id="",  # Pony is a single-file checkpoint; point weights at it
            steps=40,
            guidance=7.0,
            sampler="euler_ancestral",
            shift=None,
            multiple=64,
            max_side=1536,
            prompt_style="tags",
            negative=True,
            quality_tags="score_9, score_8_up, score_7_up, score_6_up",
            default_negative="score_4, score_5, score_6, lowres, worst quality, blurry, watermark, signature",
            clip_skip=2,
            comfy_cfg=7.0,
            comfy_files={"checkpoint": "ponyDiffusionV6XL.safetensors"},
        ),
        Profile(
            name="sd15",
            family="sd15",
            pipeline="StableDiffusionPipeline",
            repo_id="stable-diffusion-v1-5/stable-diffusion-v1-5",
            steps=30,
            guidance=7.0,
            sampler="dpmpp_2m_karras",
            shift=None,
            multiple=8,
            max_side=768,
            prompt_style="tags",
            negative=True,
            quality_tags="(masterpiece:1.2), (best quality:1.2), highly detailed",
            default_negative="(worst quality:1.4), (low quality:1.4), lowres, blurry, bad anatomy, bad hands, watermark, text",
            comfy_cfg=7.0,
            comfy_files={"checkpoint": "v1-5-pruned-emaonly.safetensors"},
        ),
    ]
}

DEFAULT_PROFILE = "z-image-turbo"

# The profiles whose control net (canny, depth, pose) reverie knows where to find.
CONTROL_PROFILES: tuple[str, ...] = tuple(name for name, p in PROFILES.items() if p.control_repo)


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ReverieError(
            f"unknown profile {name!r}: use one of {', '.join(PROFILES)} (see `reverie models`)"
        ) from None


def family_of(profile_name: str) -> Family | None:
    """The family of a profile named in a spec or a PNG; None for a name reverie does not know."""
    profile = PROFILES.get(profile_name)
    return FAMILIES[profile.family] if profile else None


# --- editors ---
# Models that change an image they are given. Each editor is a profile (its defaults, as its
# authors publish them) plus an `Editor` entry saying how it edits; a profile that is also a
# text-to-image model (FLUX.2 [klein]) is the same profile with an Editor entry. The families
# are added only where the text-to-image line-up has not already defined them.
FAMILIES.setdefault("flux2", Family(name="flux2", flow=True))
FAMILIES.setdefault("qwen-image", Family(name="qwen-image", flow=True, reads_chinese=True))


@dataclass(frozen=True)
class Editor:
    profile: str
    # "instruction": the model reads the source as a reference and the prompt as what to change;
    # "img2img": it denoises the source part-way towards a prompt (no instruction following).
    kind: str
    pipeline: str  # diffusers pipeline class that edits
    inpaint_pipeline: str = ""  # the class that takes a mask, where diffusers has one
    max_references: int = 1  # reference images one call takes (FLUX.2 [klein]: several)
    max_source_side: int = 2048  # a bigger source is refused before anything loads
    min_source_side: int = 16  # and a smaller one (FLUX.2's image processor wants 64 px a side)
    notes: str = ""


for _p in (
    Profile(
        name="flux2-klein-4b",
        family="flux2",
        pipeline="Flux2KleinPipeline",
        repo_id="black-forest-labs/FLUX.2-klein-4B",
        steps=4,  # step-distilled: 4 steps, no CFG (its model card)
        guidance=1.0,
        sampler="euler",
        shift=None,
        multiple=16,
        max_side=2048,
        prompt_style="natural",
        negative=False,
        comfy_files={"unet": "flux-2-klein-4b.safetensors", "clip": "qwen_3_4b.safetensors", "clip_type": "flux2",
                     "vae": "flux2-vae.safetensors"},
        notes="Apache-2.0; text-to-image and multi-reference editing in one model; Qwen3-4B encoder",
    ),
    Profile(
        name="qwen-image-edit-2511",
        family="qwen-image",
        pipeline="QwenImageEditPlusPipeline",
        repo_id="Qwen/Qwen-Image-Edit-2511",
        steps=40,
        guidance=4.0,  # true CFG scale, with a negative prompt (" " by default)
        sampler="euler",
        shift=None,
        multiple=16,
        max_side=2048,
        prompt_style="natural",
        negative=True,
        default_negative=" ",
        comfy_cfg=4.0,
        comfy_files={"unet": "qwen_image_edit_2511_bf16.safetensors", "clip": "qwen_2.5_vl_7b_fp8_scaled.safetensors",
                     "clip_type": "qwen_image", "vae": "qwen_image_vae.safetensors"},
        notes="instruction editor, up to 3 reference images; EN + ZH",
    ),
    Profile(
        name="flux1-kontext-dev",
        family="flux",
        pipeline="FluxKontextPipeline",
        repo_id="black-forest-labs/FLUX.1-Kontext-dev",
        steps=28,
        guidance=2.5,
        sampler="euler",
        shift=None,
        multiple=16,
        max_side=1568,
        prompt_style="natural",
        negative=False,
        comfy_files={"unet": "flux1-dev-kontext_fp8_scaled.safetensors", "clip_type": "flux"},
        notes="instruction editor, one reference image; non-commercial licence",
    ),
):
    PROFILES.setdefault(_p.name, _p)

EDITORS: dict[str, Editor] = {
    e.profile: e
    for e in [
        Editor(profile="flux2-klein-4b", kind="instruction", pipeline="Flux2KleinPipeline",
               inpaint_pipeline="Flux2KleinInpaintPipeline", max_references=4, min_source_side=64,
               notes="the small default editor"),
        Editor(profile="qwen-image-edit-2511", kind="instruction", pipeline="QwenImageEditPlusPipeline",
               max_references=3),
        Editor(profile="flux1-kontext-dev", kind="instruction", pipeline="FluxKontextPipeline",
               inpaint_pipeline="FluxKontextInpaintPipeline"),
        # The fallback where no instruction editor is present: Z-Image Turbo img2img / inpainting.
        Editor(profile="z-image-turbo", kind="img2img", pipeline="ZImageImg2ImgPipeline",
               inpaint_pipeline="ZImageInpaintPipeline", notes="not an instruction editor"),
    ]
}
# The instruction editors, the preferred first; `reverie edit` takes the first whose weights are here.
INSTRUCTION_EDITORS: tuple[str, ...] = tuple(name for name, e in EDITORS.items() if e.kind == "instruction")
FALLBACK_EDITOR = "z-image-turbo"


def editor_for(profile_name: str) -> Editor | None:
    return EDITORS.get(profile_name)
