"""Model profiles and model families: the defaults that users of each model rely on. Data, not code.

A family is what every engine and file format must agree on about a kind of model (its CFG
convention, whether it is flow-matching); a profile is one model of a family with its defaults.
Adding a family is one `Family` entry and its profiles here, one diffusers adapter in
reverie/render/families.py, one entry in the ComfyUI workflow table (render/comfy_workflow.py) and
one tiny builder (render/tiny.py); code elsewhere reads the family's fields, never its name. A
family defined outside reverie registers through `register_family`, `register_profile`,
`register_adapter`, `register_workflow` and `register_tiny` (tests/test_eighth_family.py does it).

An installed package adds a family for every process through an entry point of the group
`reverie.families` (docs/models.md): a callable that makes those five calls. FAMILIES and PROFILES
load the entry points the first time they are read, once, so that importing reverie stays cheap
and a broken plugin is one line (`plugin_problems()`, `reverie models`), never a lost built-in.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Optional, TypeVar

from reverie.errors import ReverieError

PLUGIN_GROUP = "reverie.families"
log = logging.getLogger(__name__)
V = TypeVar("V")


class Registry(MutableMapping[str, V]):
    """A table of families or profiles that loads the installed family plugins when first read.

    Reading is the trigger (not import, not a function every caller must remember) because every
    command, server and importer reads these tables, and each must see a plugin's profiles."""

    def __init__(self, entries: dict[str, V]):
        self.entries = dict(entries)

    def __getitem__(self, key: str) -> V:
        load_plugins()
        return self.entries[key]

    def __contains__(self, key: object) -> bool:
        load_plugins()
        return key in self.entries

    def __iter__(self) -> Iterator[str]:
        load_plugins()
        return iter(list(self.entries))

    def __len__(self) -> int:
        load_plugins()
        return len(self.entries)

    def __setitem__(self, key: str, value: V) -> None:
        self.entries[key] = value

    def __delitem__(self, key: str) -> None:
        del self.entries[key]

    def clear(self) -> None:  # MutableMapping's would read (and so load plugins) to empty the table
        self.entries.clear()

    def __repr__(self) -> str:
        return f"Registry({self.entries!r})"


@dataclass(frozen=True)
class Family:
    """What every engine and file format must agree on about one kind of model.

    The edit helper and anything else that needs a family's facts reads them here: the diffusers
    pipeline class, the latent format its VAE makes, the size rules, the prompt style.
    """

    name: str
    # Flow-matching: the model keeps the scheduler it ships with, and `shift` is its variety knob.
    flow: bool
    # CFG as ComfyUI and A1111 users write it = diffusers guidance + cfg_offset. Z-Image's and
    # Krea 2's diffusers guidance 0.0 is CFG 1 (no classifier-free guidance); the others run CFG above 1.
    cfg_offset: float = 0.0
    # The text encoder reads Chinese as well as English, so a prompt may stay in Chinese.
    reads_chinese: bool = False
    label: str = ""  # how people name the family
    pipeline: str = ""  # the diffusers text-to-image pipeline class
    # The latent format (VAE and channels): two families with the same one can share a VAE and latents.
    latent: str = ""
    # Guidance is a distilled embedding the transformer reads (FLUX.1/FLUX.2 [dev]), not classifier-free
    # guidance: no negative prompt, no second forward pass.
    distilled_guidance: bool = False
    # Renders legible lettering well (signs, posters, captions): the dreamer may put quoted text in.
    text_in_images: bool = False
    prompt_style: str = "natural"  # "natural" paragraphs | "tags"
    # Sizes: each side a multiple of `multiple` (VAE factor x patch size), at most `max_side`.
    multiple: int = 16
    max_side: int = 2048
    # Sizes the authors publish as (width, height); the calculator takes one when the aspect and
    # the pixel count match it closely, so users get the model's trained sizes.
    buckets: tuple[tuple[int, int], ...] = ()
    # What the dreamer, critic and formula expander keep in mind for this family (the source
    # documents' guidebook, per model): one sentence.
    prompt_advice: str = ""
    # The text encoder is an instruction-tuned chat model (Z-Image's Qwen3-4B), so the engine's own
    # encoder (diffusers) or ComfyUI's TextGenerate can write the prompts.
    chat_encoder: bool = False
    # Latent channel -> (R, G, B) for the live preview, fitted on the family's 4-channel VAE (the
    # "latent2rgb" factors ComfyUI and A1111 use); empty: the preview stretches the first three channels.
    latent_rgb: tuple[tuple[float, float, float], ...] = ()

    def runs_cfg(self, guidance: float) -> bool:
        """Whether a diffusers pipeline of this family runs classifier-free guidance (and so a negative prompt)."""
        return not self.distilled_guidance and guidance > 1.0 - self.cfg_offset

    def cfg_scale(self, guidance: float) -> float:
        """Diffusers guidance -> the CFG scale ComfyUI and A1111 show."""
        return round(guidance + self.cfg_offset, 3) if self.cfg_offset else guidance

    def guidance(self, cfg_scale: float) -> float:
        """The CFG scale ComfyUI and A1111 write -> diffusers guidance."""
        return round(cfg_scale - self.cfg_offset, 3) if self.cfg_offset else cfg_scale


# Qwen-Image's published sizes (Qwen/Qwen-Image-2512 model card), rounded to its multiple of 16.
QWEN_IMAGE_BUCKETS = ((1328, 1328), (1664, 928), (928, 1664), (1472, 1104), (1104, 1472), (1584, 1056), (1056, 1584))
# Z-Image's published sizes at 1024 (the Tongyi-MAI Z-Image demo's resolution list).
Z_IMAGE_BUCKETS = ((1024, 1024), (1152, 896), (896, 1152), (1152, 864), (864, 1152), (1248, 832), (832, 1248),
                   (1280, 720), (720, 1280), (1344, 576), (576, 1344))

FLUX2_ADVICE = ("FLUX.2 follows long, structured descriptions closely (subject first, then setting, style, lighting, "
                "camera) and letters quoted text and exact colours such as hex codes faithfully.")

FAMILIES: Registry[Family] = Registry({
    f.name: f
    for f in [
        Family(name="z-image", label="Z-Image", pipeline="ZImagePipeline", flow=True, cfg_offset=1.0,
               reads_chinese=True, text_in_images=True, latent="flux1-16ch", buckets=Z_IMAGE_BUCKETS, chat_encoder=True,
               prompt_advice="Z-Image follows long, concrete paragraphs closely and letters short quoted text in "
                             "English or Chinese cleanly."),
        # FLUX.1: guidance distilled into dev's transformer (schnell ignores it); ComfyUI's FluxGuidance, Forge's
        # "Distilled CFG Scale".
        Family(name="flux", label="FLUX.1", pipeline="FluxPipeline", flow=True, latent="flux1-16ch", max_side=1280,
               distilled_guidance=True),
        Family(name="sdxl", label="SDXL", pipeline="StableDiffusionXLPipeline", flow=False, latent="sd-4ch",
               prompt_style="tags", multiple=64, max_side=1536,
               latent_rgb=((0.3920, 0.4054, 0.4549), (-0.2634, -0.0196, 0.0653), (0.0568, 0.1687, -0.0755),
                           (-0.3112, -0.2359, -0.2076))),
        Family(name="sd15", label="SD 1.5", pipeline="StableDiffusionPipeline", flow=False, latent="sd-4ch",
               prompt_style="tags", multiple=8, max_side=768,
               latent_rgb=((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264),
                           (-0.184, -0.271, -0.473))),
        # FLUX.2 [dev]: Mistral Small 3.1 encoder, guidance distilled into the transformer (diffusers Flux2Pipeline docs).
        Family(name="flux2", label="FLUX.2 [dev]", pipeline="Flux2Pipeline", flow=True, latent="flux2-32ch",
               distilled_guidance=True, text_in_images=True, prompt_advice=FLUX2_ADVICE),
        # FLUX.2 [klein]: Qwen3 encoder, real CFG (neg + g*(pos-neg)) on the base models, none on the distilled ones.
        Family(name="flux2-klein", label="FLUX.2 [klein]", pipeline="Flux2KleinPipeline", flow=True,
               latent="flux2-32ch", text_in_images=True, prompt_advice=FLUX2_ADVICE),
        # Qwen-Image: Qwen2.5-VL encoder, true CFG with a negative prompt; its strength is text in images.
        Family(name="qwen-image", label="Qwen-Image", pipeline="QwenImagePipeline", flow=True, reads_chinese=True,
               latent="wan-16ch", text_in_images=True, buckets=QWEN_IMAGE_BUCKETS,
               prompt_advice="Qwen-Image is the strongest open model for text in images: when the idea asks for "
                             "or implies words (a sign, poster, label, title, caption), give the exact words in "
                             "double quotes and say where they stand, how large, in what colour and typeface."),
        # Chroma: FLUX.1-schnell derived, T5 only, real CFG with a negative prompt.
        Family(name="chroma", label="Chroma", pipeline="ChromaPipeline", flow=True, latent="flux1-16ch",
               prompt_advice="Chroma reads plain natural language through T5 alone: name the medium outright "
                             "(photograph, anime illustration, oil painting) in the first sentence; no tag weights."),
        # SD3.5: MMDiT, two CLIPs and T5, real CFG; the VAE's 8x and a patch of 2 make sides multiples of 16.
        Family(name="sd3", label="Stable Diffusion 3.5", pipeline="StableDiffusion3Pipeline", flow=True,
               latent="sd3-16ch", max_side=1536,
               prompt_advice="SD3.5's CLIP encoders read only the first 77 tokens: put the subject, medium and "
                             "style in the first two sentences, the finer detail after."),
        # Krea 2: Qwen3-VL encoder and the Qwen-Image VAE; guidance is cond + g*(cond-uncond) (diffusers Krea 2 docs).
        Family(name="krea2", label="Krea 2", pipeline="Krea2Pipeline", flow=True, cfg_offset=1.0, latent="wan-16ch",
               prompt_advice="Krea 2 is tuned for aesthetics and style: be specific about the medium, the "
                             "artistic style, the colour grading and the texture of the image."),
    ]
})


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
    # The repo asks each user to accept its licence on the hub before it downloads.
    gated: bool = False
    # Where the settings above come from (model card, diffusers docs, ComfyUI template).
    source: str = ""
    # The page to read the settings on, where it is not the hub repo's model card.
    source_url: str = ""
    # Words that, all found in another tool's model name (a fine-tune's file), mean this profile when
    # no name, repo or file of a profile is in it: "flux schnell" is any FLUX.1 schnell derivative.
    aliases: tuple[str, ...] = ()

    @property
    def traits(self) -> Family:
        return FAMILIES[self.family]


PROFILES: Registry[Profile] = Registry({
    p.name: p
    for p in [
        Profile(
            name="z-image-turbo",
            family="z-image",
            pipeline="ZImagePipeline",
            repo_id="Tongyi-MAI/Z-Image-Turbo",
            aliases=('z-image', 'zimage', 'z_image'),
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
            aliases=('flux schnell',),
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
            aliases=('flux',),
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
            aliases=('xl',),
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
            aliases=('pony',),
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
        # -- the models people run now (issue 23) ------------------------------------------------
        Profile(
            name="z-image",
            family="z-image",
            pipeline="ZImagePipeline",
            repo_id="Tongyi-MAI/Z-Image",
            aliases=('z-image base', 'zimage base', 'z_image base'),
            steps=50,
            guidance=4.0,  # diffusers pos + 4*(pos-neg) = ComfyUI CFG 5
            sampler="euler",
            shift=3.0,
            multiple=16,
            max_side=2048,
            prompt_style="natural",
            negative=True,
            comfy_cfg=5.0,
            comfy_files={"unet": "z_image_bf16.safetensors", "clip": "qwen_3_4b.safetensors", "clip_type": "lumina2",
                         "vae": "ae.safetensors"},
            notes="undistilled base: 28-50 steps, real CFG and a negative prompt; more varied than Turbo",
            source="Tongyi-MAI/Z-Image model card (50 steps, guidance 4); ComfyUI template image_z_image.json "
                   "(shift 3; it runs 25 steps of res_multistep at CFG 4)",
        ),
        Profile(
            name="flux2-klein-4b",
            family="flux2-klein",
            pipeline="Flux2KleinPipeline",
            repo_id="black-forest-labs/FLUX.2-klein-4B",
            aliases=('flux2 klein', 'flux.2 klein', 'flux-2 klein'),
            steps=4,
            guidance=1.0,  # step-distilled: guidance is ignored, no negative
            sampler="euler",
            shift=None,  # the scheduler shifts by resolution (dynamic mu)
            multiple=16,
            max_side=2048,
            prompt_style="natural",
            negative=False,
            comfy_cfg=1.0,
            comfy_files={"unet": "flux-2-klein-4b.safetensors", "clip": "qwen_3_4b.safetensors", "clip_type": "flux2",
                         "vae": "flux2-vae.safetensors"},
            notes="Apache 2.0; 4 distilled steps; also edits with reference images",
            source="black-forest-labs/FLUX.2-klein-4B model card (4 steps, guidance 1.0, is_distilled); "
                   "ComfyUI template image_flux2_klein_text_to_image.json",
        ),
        Profile(
            name="flux2-klein-base-4b",
            family="flux2-klein",
            pipeline="Flux2KleinPipeline",
            repo_id="black-forest-labs/FLUX.2-klein-base-4B",
            steps=50,
            guidance=4.0,
            sampler="euler",
            shift=None,
            multiple=16,
            max_side=2048,
            prompt_style="natural",
            negative=True,
            comfy_cfg=4.0,
            comfy_files={"unet": "flux-2-klein-base-4b.safetensors", "clip": "qwen_3_4b.safetensors",
                         "clip_type": "flux2", "vae": "flux2-vae.safetensors"},
            notes="the undistilled klein: real CFG and a negative prompt; for LoRA training and variety",
            source="diffusers Flux2KleinPipeline docs (50 steps, guidance 4.0); ComfyUI template "
                   "image_flux2_klein_text_to_image.json (it runs 20 steps at CFG 5)",
        ),
        Profile(
            name="flux2-dev",
            family="flux2",
            pipeline="Flux2Pipeline",
            repo_id="black-forest-labs/FLUX.2-dev",
            aliases=('flux2', 'flux.2', 'flux-2'),
            steps=50,
            guidance=4.0,  # distilled guidance (FluxGuidance in ComfyUI), not CFG
            sampler="euler",
            shift=None,
            multiple=16,
            max_side=2048,
            prompt_style="natural",
            negative=False,
            comfy_cfg=1.0,
            comfy_files={"unet": "flux2_dev_fp8mixed.safetensors", "clip": "mistral_3_small_flux2_bf16.safetensors",
                         "clip_type": "flux2", "vae": "full_encoder_small_decoder.safetensors"},
            gated=True,
            notes="32B; non-commercial licence, gated on the hub; 28 steps is the card's speed trade-off",
            source="black-forest-labs/FLUX.2-dev model card and diffusers Flux2Pipeline docs (50 steps, guidance 4); "
                   "ComfyUI template image_flux2_text_to_image.json (FluxGuidance 4, 20 steps)",
        ),
        Profile(
            name="qwen-image",
            family="qwen-image",
            pipeline="QwenImagePipeline",
            repo_id="Qwen/Qwen-Image-2512",
            aliases=('qwen image', 'qwenimage'),
            steps=50,
            guidance=4.0,  # true_cfg_scale in diffusers
            sampler="euler",
            shift=None,  # diffusers shifts by resolution; ComfyUI's template fixes shift 3.1
            multiple=16,
            max_side=2048,
            prompt_style="natural",
            negative=True,
            default_negative="低分辨率，低画质，肢体畸形，手指畸形，画面过饱和，蜡像感，人脸无细节，过度光滑，画面具有AI感。构图混乱。文字模糊，扭曲",
            comfy_cfg=4.0,
            comfy_files={"unet": "qwen_image_2512_fp8_e4m3fn.safetensors", "clip": "qwen_2.5_vl_7b_fp8_scaled.safetensors",
                         "clip_type": "qwen_image", "vae": "qwen_image_vae.safetensors"},
            notes="Qwen-Image 2512; best open model for text in images (English and Chinese)",
            source="Qwen/Qwen-Image-2512 model card (50 steps, true_cfg_scale 4, its negative prompt, sizes); "
                   "ComfyUI template image_qwen_Image_2512.json (shift 3.1, CFG 4, euler simple)",
        ),
        Profile(
            name="chroma1-hd",
            family="chroma",
            pipeline="ChromaPipeline",
            repo_id="lodestones/Chroma1-HD",
            aliases=('chroma',),
            steps=40,
            guidance=3.0,
            sampler="euler",
            shift=None,
            multiple=16,
            max_side=1536,
            prompt_style="natural",
            negative=True,
            default_negative="low quality, ugly, unfinished, out of focus, deformed, disfigure, blurry, smudged, "
                             "restricted palette, flat colors",
            comfy_cfg=3.0,
            comfy_files={"unet": "Chroma1-HD-fp8mixed.safetensors", "clip": "t5xxl_fp8_e4m3fn_scaled.safetensors",
                         "clip_type": "chroma", "vae": "ae.safetensors"},
            notes="Apache 2.0, 8.9B, FLUX.1-schnell derived; uncensored; real CFG",
            source="lodestones/Chroma1-HD model card and its demo space (40 steps, guidance 3.0, negative prompt); "
                   "ComfyUI template image_chroma_text_to_image.json (26 steps, beta scheduler, CFG 3.5)",
        ),
        Profile(
            name="sd3.5-large",
            family="sd3",
            pipeline="StableDiffusion3Pipeline",
            repo_id="stabilityai/stable-diffusion-3.5-large",
            aliases=('sd3', 'stable-diffusion-3'),
            steps=28,
            guidance=3.5,
            sampler="euler",
            shift=3.0,
            multiple=16,
            max_side=1536,
            prompt_style="natural",
            negative=True,
            comfy_cfg=3.5,
            comfy_files={"checkpoint": "sd3.5_large_fp8_scaled.safetensors"},
            gated=True,
            notes="8B MMDiT; Stability Community Licence, gated on the hub",
            source="stabilityai/stable-diffusion-3.5-large model card (28 steps, guidance 3.5; scheduler shift 3.0); "
                   "ComfyUI template sd3.5_simple_example.json (20 steps, CFG 4, sgm_uniform)",
        ),
        Profile(
            name="sd3.5-large-turbo",
            family="sd3",
            pipeline="StableDiffusion3Pipeline",
            repo_id="stabilityai/stable-diffusion-3.5-large-turbo",
            aliases=('sd3 turbo', 'stable-diffusion-3 turbo'),
            steps=4,
            guidance=0.0,  # ADD-distilled: no CFG
            sampler="euler",
            shift=3.0,
            multiple=16,
            max_side=1536,
            prompt_style="natural",
            negative=False,
            comfy_cfg=1.0,
            comfy_files={"checkpoint": "sd3.5_large_turbo.safetensors"},
            gated=True,
            notes="4 ADD-distilled steps, no CFG; gated on the hub",
            source="stabilityai/stable-diffusion-3.5-large-turbo model card (4 steps, guidance 0.0)",
        ),
        Profile(
            name="krea2",
            family="krea2",
            pipeline="Krea2Pipeline",
            repo_id="krea/Krea-2-Turbo",
            source_url="https://github.com/krea-ai/krea-2",
            aliases=('krea',),
            steps=8,
            guidance=0.0,  # Krea 2 convention: 0 = CFG 1, no negative
            sampler="euler",
            shift=None,  # the distilled checkpoint fixes mu = 1.15 itself
            multiple=16,
            max_side=2048,
            prompt_style="natural",
            negative=False,
            comfy_cfg=1.0,
            comfy_files={"unet": "krea2_turbo_fp8_scaled.safetensors", "clip": "qwen3vl_4b_fp8_scaled.safetensors",
                         "clip_type": "krea2", "vae": "qwen_image_vae.safetensors"},
            notes="Krea 2 Turbo: 12.9B, 8 distilled steps, 1k-2k px; Krea 2 Community Licence",
            # Checked through `search` (2026-12-05): the repo ids are the ones Krea's own README
            # (github.com/krea-ai/krea-2) and its hub organisation page link; the README runs Turbo at
            # 8 steps, cfg 0, mu 1.15, 1k-2k px. Unverified: that the hub repos hold the diffusers
            # layout (model_index.json). A LoRA card loads krea/Krea-2-Turbo with
            # Krea2Pipeline.from_pretrained, but the diffusers docs (written before the release) load
            # a local conversion, and community conversions exist (CalamitousFelicitousness/
            # Krea-2-Turbo-Diffusers); if a pull gives a single .safetensors, pass --model-path a conversion.
            source="krea-ai/krea-2 README and diffusers Krea 2 docs (distilled: 8 steps, guidance 0.0); "
                   "ComfyUI template image_krea2_turbo_t2i.json (8 steps, CFG 1, euler simple)",
        ),
        Profile(
            name="krea2-raw",
            family="krea2",
            pipeline="Krea2Pipeline",
            repo_id="krea/Krea-2-Raw",
            source_url="https://github.com/krea-ai/krea-2",
            # Krea's README: `--steps 52 --cfg 3.5`, where its sampler computes cond + cfg*(cond - uncond),
            # the convention diffusers' Krea2Pipeline keeps: guidance 3.5 here, ComfyUI CFG 4.5. (The
            # diffusers docs name 28 steps at 4.5, the defaults of Krea's sampler, not its recommendation.)
            steps=52,
            guidance=3.5,
            sampler="euler",
            shift=None,
            multiple=16,
            max_side=1280,  # "trained to generate up to 1k resolution" (README); 1280 is its sampler's maxres
            prompt_style="natural",
            negative=True,
            comfy_cfg=4.5,
            comfy_files={"unet": "krea2_raw_bf16.safetensors", "clip": "qwen3vl_4b_fp8_scaled.safetensors",
                         "clip_type": "krea2", "vae": "qwen_image_vae.safetensors"},
            notes="the undistilled Krea 2 base: real CFG, for LoRA training and variety",
            source="krea-ai/krea-2 README (raw: 52 steps, cfg 3.5 in Krea's convention, up to 1k px)",
        ),
    ]
})

DEFAULT_PROFILE = "z-image-turbo"

# A distilled profile -> its undistilled base of the same architecture (same latents, text
# encoder and transformer shape), so the first denoising steps can run on the base and the rest
# on the distilled model (--handoff-steps; Gandikota & Bau, arXiv 2503.10637).
HANDOFF_BASES: dict[str, str] = {"z-image-turbo": "z-image", "flux2-klein-4b": "flux2-klein-base-4b"}


def handoff_base(name: str) -> Optional[str]:
    """The base profile a distilled profile hands its first steps from, or None when it has none here."""
    base = HANDOFF_BASES.get(name)
    return base if base in PROFILES else None

# The profiles whose control net (canny, depth, pose) reverie knows where to find.
CONTROL_PROFILES: tuple[str, ...] = tuple(name for name, p in PROFILES.entries.items() if p.control_repo)


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        broken = f"; {len(PLUGINS.problems)} family plugin(s) failed to load" if PLUGINS.problems else ""
        raise ReverieError(
            f"unknown profile {name!r}: use one of {', '.join(PROFILES)}{broken} (see `reverie models`)"
        ) from None


def _norm(name: str) -> str:
    name = name.lower().rsplit("/", 1)[-1]
    for ext in (".safetensors", ".ckpt", ".gguf", ".pt", ".pth"):
        name = name.removesuffix(ext)
    return "".join(ch if ch.isalnum() else "-" for ch in name)


def match_profile(model_name: str) -> Optional[str]:
    """The profile a model name from another tool means (a PNG's `Model:`, a ComfyUI loader's file):
    its profile name, hub repo or ComfyUI file name, the longest that the name contains; None if none."""
    name = _norm(model_name or "")
    best, best_len = None, 0
    for p in PROFILES.values():
        keys = {p.name, p.repo_id, p.comfy_files.get("unet", ""), p.comfy_files.get("checkpoint", "")}
        for key in filter(None, map(_norm, keys)):
            if key in name and len(key) > best_len:
                best, best_len = p.name, len(key)
    return best


# A model name no profile claims: SD 1.5 checkpoints are most of the unnamed ones out there.
FOREIGN_FALLBACK = "sd15"


def guess_profile(model_name: str) -> str:
    """The profile another tool's model name most likely means: `match_profile`, else the profile whose
    alias words the name holds (the most letters matched wins), else FOREIGN_FALLBACK."""
    matched = match_profile(model_name)
    if matched:
        return matched
    name = (model_name or "").lower()
    best, best_len = FOREIGN_FALLBACK, 0
    for p in PROFILES.values():
        for alias in p.aliases:
            words = alias.lower().split()
            if all(w in name for w in words) and sum(map(len, words)) > best_len:
                best, best_len = p.name, sum(map(len, words))
    return best


def _check_new_name(kind: str, name: str, built_in) -> None:
    """A registered name is neither built in nor another plugin's (one line naming the fix)."""
    if name in built_in:
        raise ReverieError(f"{kind} {name} reuses the name of a built-in {kind}: rename it")
    claimed = PLUGINS.sources.get((kind, name))
    if PLUGINS.current and claimed:
        raise ReverieError(f"{kind} {name} is already registered by {claimed}: rename it")


def register_family(family: Family) -> None:
    """Add a family (a plugin's, a test's); its profiles follow through `register_profile`."""
    _check_new_name("family", family.name, BUILT_IN_FAMILIES)
    FAMILIES[family.name] = family


def register_profile(profile: Profile) -> None:
    """Add a profile of a known family; `--profile`, `reverie models` and the importers see it."""
    _check_new_name("profile", profile.name, BUILT_IN_PROFILES)
    if profile.family not in FAMILIES:
        raise ReverieError(f"profile {profile.name} names family {profile.family!r}, which is not registered: "
                           f"register_family it first")
    PROFILES[profile.name] = profile


class FamilyPlugins:
    """The state of the `reverie.families` entry points: loaded once per process, on first read."""

    def __init__(self) -> None:
        # "waiting": this module is still being defined (its own reads must not load anything);
        # "ready": the first read loads; "loading": a plugin is registering (its reads see the tables as
        # they are); "loaded": done.
        self.state = "waiting"
        self.current = ""  # "DIST (module:object)" of the plugin registering now
        self.sources: dict[tuple[str, str], str] = {}  # ("family" | "profile", name) -> the plugin that added it
        self.problems: list[str] = []  # one line per plugin that failed to load
        self.lock = threading.RLock()
        # The other layers' tables keyed by family name (adapters, workflows, tiny builders): what a
        # failed plugin put there goes too. They sign up here because this layer cannot import them.
        self.family_tables: list[dict] = []


PLUGINS = FamilyPlugins()


def watch_family_table(table: dict) -> dict:
    """Sign up a table keyed by family name, so a plugin that fails leaves nothing in it."""
    PLUGINS.family_tables.append(table)
    return table


def load_plugins() -> None:
    """Run every installed `reverie.families` entry point once. A plugin that fails (import error,
    exception, a built-in's name) is one line on stderr and in `plugin_problems()`, and whatever it had
    registered in FAMILIES and PROFILES is taken back, so the built-in profiles always stand."""
    if PLUGINS.state in ("waiting", "loaded"):
        return
    # A server's threads may read the tables at once: the others wait for the whole set (the loading
    # thread's own reads, from inside a plugin, pass: the lock is re-entrant and the state is "loading").
    with PLUGINS.lock:
        if PLUGINS.state != "ready":
            return
        PLUGINS.state = "loading"
        try:
            from importlib.metadata import entry_points

            found = sorted(entry_points(group=PLUGIN_GROUP), key=lambda ep: (ep.name, ep.value))
            for ep in found:
                load_plugin(ep)
        finally:
            PLUGINS.state = "loaded"


def load_plugin(ep) -> None:
    dist = ep.dist.name if getattr(ep, "dist", None) is not None else "?"
    origin = f"{dist} ({ep.value})"
    families, profiles = dict(FAMILIES.entries), dict(PROFILES.entries)
    PLUGINS.current = origin
    try:
        register = ep.load()
        if not callable(register):
            raise ReverieError("its entry point must name a function that registers the family")
        register()
    except Exception as e:  # a third party's failure must cost its own family, never reverie's
        FAMILIES.entries.clear()
        FAMILIES.entries.update(families)
        PROFILES.entries.clear()
        PROFILES.entries.update(profiles)
        for table in PLUGINS.family_tables:
            for name in [k for k in table if k not in families]:
                del table[name]
        why = " ".join(str(e).split()) or type(e).__name__
        line = f"family plugin {ep.name} (from {dist}) was not loaded: {why}; fix it or `pip uninstall {dist}`"
        PLUGINS.problems.append(line)
        log.info("%s", line, exc_info=True)  # the traceback goes to the home's log, if one is open
        print(f"warning: {line}", file=sys.stderr)
        return
    finally:
        PLUGINS.current = ""
    for kind, before, table in (("family", families, FAMILIES.entries), ("profile", profiles, PROFILES.entries)):
        for name in table.keys() - before.keys():
            PLUGINS.sources[(kind, name)] = origin


def plugin_problems() -> list[str]:
    """One line per installed family plugin that failed to load."""
    load_plugins()
    return list(PLUGINS.problems)


def plugin_source(profile_name: str) -> Optional[str]:
    """"DIST (module:object)" of the plugin that added a profile; None for reverie's own and a test's."""
    load_plugins()
    return PLUGINS.sources.get(("profile", profile_name))


def family_of(profile_name: str) -> Family | None:
    """The family of a profile named in a spec or a PNG; None for a name reverie does not know."""
    profile = PROFILES.get(profile_name)
    return FAMILIES[profile.family] if profile else None


# --- editors ---
# Models that change an image they are given. Each editor is a profile (its defaults, as its
# authors publish them) plus an `Editor` entry saying how it edits; a profile that is also a
# text-to-image model (FLUX.2 [klein]) is the same profile with an Editor entry.


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
        # Kontext's own preferred sizes reach 1568 px on a side (21:9); reverie keeps the FLUX.1
        # family's 1280 cap, as a profile may be stricter than its family but never looser.
        max_side=1280,
        prompt_style="natural",
        negative=False,
        # The files of ComfyUI's flux_kontext_dev_basic.json template.
        comfy_files={"unet": "flux1-dev-kontext_fp8_scaled.safetensors", "t5": "t5xxl_fp8_e4m3fn_scaled.safetensors",
                     "clip_type": "flux"},
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


# What reverie itself defines: a plugin may add names, never take one of these.
BUILT_IN_FAMILIES: frozenset[str] = frozenset(FAMILIES.entries)
BUILT_IN_PROFILES: frozenset[str] = frozenset(PROFILES.entries)
PLUGINS.state = "ready"  # every table above is defined: the first read from now on loads the plugins
