"""How the diffusers engine drives each model family: one adapter per family.

Everything that differs between families in diffusers lives here: the img2img and control-net
pipeline classes, how a prompt is encoded into the keyword arguments the pipeline takes, and what
a blind step zeroes and swaps back. The family's data (CFG convention, flow-matching) is in
reverie.profiles. Adding a family is a `Family` and its profiles there, and one adapter here.
"""

from __future__ import annotations

from typing import Any, Optional

from reverie.errors import ReverieError
from reverie.profiles import BUILT_IN_FAMILIES, FAMILIES, Family, watch_family_table

# Sampler names as ComfyUI and A1111 users write them -> (diffusers scheduler class, extra config).
# Flow-matching models (Z-Image, Flux) keep the scheduler they ship with for "euler";
# res_multistep exists only in ComfyUI, so the diffusers engine refuses it by name.
SAMPLERS: dict[str, tuple[str, dict]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "dpmpp_2m_sde_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True, "algorithm_type": "sde-dpmsolver++"}),
    "unipc": ("UniPCMultistepScheduler", {}),
}
COMFY_ONLY_SAMPLERS = ("res_multistep",)

Embeds = dict[str, Any]


def is_conditioning(key: str) -> bool:
    """Embeddings a blind step zeroes; attention masks and position ids stay (a zeroed mask hides every token)."""
    return not (key.endswith("mask") or key.endswith("ids"))


def zeroed(embeds: Embeds) -> Embeds:
    import torch

    return {k: ([torch.zeros_like(t) for t in v] if isinstance(v, list) else torch.zeros_like(v))
            for k, v in embeds.items() if is_conditioning(k)}


def text_length(pipe, default: int, tokenizer: str = "tokenizer") -> int:
    """The text sequence length to encode: the pipeline's default, or less where the tokenizer says
    less (the tiny models keep short sequences so a CPU renders them in moments)."""
    limit = getattr(getattr(pipe, tokenizer, None), "model_max_length", None)
    return min(default, limit) if isinstance(limit, int) and limit > 0 else default


class FamilyAdapter:
    """The diffusers side of one family. Subclasses set the class names and override what differs."""

    family: str
    # diffusers class for img2img built from the loaded pipeline's components; None: AutoPipelineForImage2Image.
    img2img_pipeline: Optional[str] = None
    # Control net model and pipeline classes; None: canny/depth/pose are refused for this family.
    controlnet_model: Optional[str] = None
    controlnet_pipeline: Optional[str] = None
    # Set where diffusers has no img2img for the family: the one line that refuses a reference.
    img2img_refusal: str = ""
    # Latent channels where the engine can hand the pipeline its initial latents (RenderSpec.noise_lowfreq,
    # noise-space search); None: the family refuses noise search.
    noise_channels: Optional[int] = None
    # Whether the pipeline's loop lets the step-end callback hand the latents from the base
    # transformer to the distilled one (render/handoff.py); False: --handoff-steps is refused.
    handoff: bool = False

    @property
    def traits(self) -> Family:
        return FAMILIES[self.family]

    def img2img(self, pipe):
        import diffusers

        if self.img2img_refusal:
            raise ReverieError(self.img2img_refusal)
        if self.img2img_pipeline:
            return getattr(diffusers, self.img2img_pipeline)(**pipe.components)
        return diffusers.AutoPipelineForImage2Image.from_pipe(pipe)

    def controlnet(self, pipe, controlnet):
        import diffusers

        # The control net borrows the pipeline's components (Z-Image: the transformer's embedders and refiners); nothing is copied.
        return getattr(diffusers, self.controlnet_pipeline)(**pipe.components, controlnet=controlnet)

    def encode(self, pipe, prompt: str, negative: str, cfg: bool, clip_skip: Optional[int], device) -> Embeds:
        """Batch-of-one embeddings for (prompt, negative), named as the pipeline's call takes them."""
        raise NotImplementedError

    def call_kwargs(self, guidance: float) -> dict[str, Any]:
        """How the pipeline's call takes the guidance (Qwen-Image names its CFG true_cfg_scale)."""
        return {"guidance_scale": guidance}

    def blind(self, real: Embeds, cfg: bool) -> tuple[Embeds, Embeds]:
        """Call kwargs for the blind first steps, and what the step-end callback swaps in after them.

        The callback hands back tensors in the form the denoising loop holds them.
        """
        positive = {k: v for k, v in real.items() if not k.startswith("negative")}
        return {**real, **zeroed(positive)}, {"prompt_embeds": real["prompt_embeds"]}


class ZImageAdapter(FamilyAdapter):
    family = "z-image"
    noise_channels = 16
    handoff = True
    img2img_pipeline = "ZImageImg2ImgPipeline"
    controlnet_model = "ZImageControlNetModel"
    controlnet_pipeline = "ZImageControlNetPipeline"

    def encode(self, pipe, prompt, negative, cfg, clip_skip, device):
        # Z-Image takes lists of per-image embeddings.
        pos, neg = pipe.encode_prompt(prompt=prompt, device=device, do_classifier_free_guidance=cfg,
                                      negative_prompt=negative or None)
        embeds = {"prompt_embeds": [pos[0]]}
        if cfg:
            embeds["negative_prompt_embeds"] = [neg[0]]
        return embeds


class FluxAdapter(FamilyAdapter):
    family = "flux"

    def encode(self, pipe, prompt, negative, cfg, clip_skip, device):
        pos, pooled, _text_ids = pipe.encode_prompt(prompt=prompt, prompt_2=None, device=device, num_images_per_prompt=1)
        return {"prompt_embeds": pos, "pooled_prompt_embeds": pooled}

    def blind(self, real, cfg):
        # Flux's loop only lets the callback replace the T5 sequence; the pooled CLIP vector stays.
        return {**real, **zeroed({"prompt_embeds": real["prompt_embeds"]})}, {"prompt_embeds": real["prompt_embeds"]}


class SD15Adapter(FamilyAdapter):
    family = "sd15"

    def encode(self, pipe, prompt, negative, cfg, clip_skip, device):
        pos, neg = pipe.encode_prompt(prompt, device, 1, cfg, negative_prompt=negative or None, clip_skip=clip_skip)
        embeds = {"prompt_embeds": pos}
        if cfg:
            embeds["negative_prompt_embeds"] = neg
        return embeds

    def blind(self, real, cfg):
        import torch

        start, swap = super().blind(real, cfg)
        if cfg:  # UNet pipelines keep [negative, positive] concatenated once CFG is on
            swap = {"prompt_embeds": torch.cat([real["negative_prompt_embeds"], real["prompt_embeds"]])}
        return start, swap


class SDXLAdapter(FamilyAdapter):
    family = "sdxl"

    def encode(self, pipe, prompt, negative, cfg, clip_skip, device):
        pos, neg, pooled, neg_pooled = pipe.encode_prompt(
            prompt=prompt, device=device, num_images_per_prompt=1, do_classifier_free_guidance=cfg,
            negative_prompt=negative or None, clip_skip=clip_skip)
        embeds = {"prompt_embeds": pos, "pooled_prompt_embeds": pooled}
        if cfg:
            embeds.update(negative_prompt_embeds=neg, negative_pooled_prompt_embeds=neg_pooled)
        return embeds

    def blind(self, real, cfg):
        import torch

        start, _ = super().blind(real, cfg)
        if cfg:  # as SD1.5, and the pooled vector travels as add_text_embeds
            return start, {"prompt_embeds": torch.cat([real["negative_prompt_embeds"], real["prompt_embeds"]]),
                           "add_text_embeds": torch.cat([real["negative_pooled_prompt_embeds"], real["pooled_prompt_embeds"]])}
        return start, {"prompt_embeds": real["prompt_embeds"], "add_text_embeds": real["pooled_prompt_embeds"]}


class Flux2Adapter(FamilyAdapter):
    """FLUX.2 [dev]: one Mistral sequence, guidance distilled into the transformer (no negative)."""

    family = "flux2"
    img2img_refusal = ("FLUX.2 [dev] has no img2img in diffusers (its references are for editing): "
                       "drop the img2img reference, or use the z-image, qwen-image, chroma1-hd or sd3.5-large profile")

    def encode(self, pipe, prompt, negative, cfg, clip_skip, device):
        pos, _text_ids = pipe.encode_prompt(prompt=prompt, device=device, num_images_per_prompt=1,
                                            max_sequence_length=text_length(pipe, 512))
        return {"prompt_embeds": pos}


class Flux2KleinAdapter(FamilyAdapter):
    """FLUX.2 [klein]: Qwen3 sequence; the base models run real CFG against a negative sequence."""

    family = "flux2-klein"
    img2img_refusal = ("FLUX.2 [klein] has no img2img in diffusers (its references are for editing): "
                       "drop the img2img reference, or use the z-image, qwen-image, chroma1-hd or sd3.5-large profile")

    def encode(self, pipe, prompt, negative, cfg, clip_skip, device):
        length = text_length(pipe, 512)
        pos, _ids = pipe.encode_prompt(prompt=prompt, device=device, num_images_per_prompt=1, max_sequence_length=length)
        embeds = {"prompt_embeds": pos}
        if cfg:
            embeds["negative_prompt_embeds"] = pipe.encode_prompt(prompt=negative or "", device=device,
                                                                  num_images_per_prompt=1, max_sequence_length=length)[0]
        return embeds


class QwenImageAdapter(FamilyAdapter):
    """Qwen-Image: Qwen2.5-VL sequences with their masks; CFG is `true_cfg_scale` and needs a negative."""

    family = "qwen-image"
    img2img_pipeline = "QwenImageImg2ImgPipeline"

    def encode(self, pipe, prompt, negative, cfg, clip_skip, device):
        pos, mask = pipe.encode_prompt(prompt=prompt, device=device, num_images_per_prompt=1)
        embeds = {"prompt_embeds": pos, "prompt_embeds_mask": mask}
        if cfg:
            # The card's default negative is one space, never empty: the pipeline runs no CFG without one.
            neg, neg_mask = pipe.encode_prompt(prompt=negative or " ", device=device, num_images_per_prompt=1)
            embeds.update(negative_prompt_embeds=neg, negative_prompt_embeds_mask=neg_mask)
        # The pipeline hands back no mask when every token is real.
        return {k: v for k, v in embeds.items() if v is not None}

    def call_kwargs(self, guidance):
        return {"true_cfg_scale": guidance, "guidance_scale": None}


class ChromaAdapter(FamilyAdapter):
    """Chroma: T5 only, with attention masks; real CFG."""

    family = "chroma"
    img2img_pipeline = "ChromaImg2ImgPipeline"

    def encode(self, pipe, prompt, negative, cfg, clip_skip, device):
        pos, _ids, mask, neg, _neg_ids, neg_mask = pipe.encode_prompt(
            prompt=prompt, negative_prompt=negative or "", device=device, num_images_per_prompt=1,
            do_classifier_free_guidance=cfg, max_sequence_length=text_length(pipe, 512))
        embeds = {"prompt_embeds": pos, "prompt_attention_mask": mask}
        if cfg:
            embeds.update(negative_prompt_embeds=neg, negative_prompt_attention_mask=neg_mask)
        return embeds


class SD3Adapter(FamilyAdapter):
    """SD3.5: CLIP-L + CLIP-G + T5 sequence and a pooled vector; CFG concatenates [negative, positive] like SDXL."""

    family = "sd3"
    img2img_pipeline = "StableDiffusion3Img2ImgPipeline"

    def encode(self, pipe, prompt, negative, cfg, clip_skip, device):
        pos, neg, pooled, neg_pooled = pipe.encode_prompt(
            prompt=prompt, prompt_2=None, prompt_3=None, device=device, num_images_per_prompt=1,
            do_classifier_free_guidance=cfg, negative_prompt=negative or None, clip_skip=clip_skip,
            max_sequence_length=text_length(pipe, 256, "tokenizer_3"))
        embeds = {"prompt_embeds": pos, "pooled_prompt_embeds": pooled}
        if cfg:
            embeds.update(negative_prompt_embeds=neg, negative_pooled_prompt_embeds=neg_pooled)
        return embeds

    def blind(self, real, cfg):
        import torch

        start, _ = super().blind(real, cfg)
        if cfg:
            return start, {"prompt_embeds": torch.cat([real["negative_prompt_embeds"], real["prompt_embeds"]]),
                           "pooled_prompt_embeds": torch.cat([real["negative_pooled_prompt_embeds"],
                                                              real["pooled_prompt_embeds"]])}
        return start, {"prompt_embeds": real["prompt_embeds"], "pooled_prompt_embeds": real["pooled_prompt_embeds"]}


class Krea2Adapter(FamilyAdapter):
    """Krea 2: stacked Qwen3-VL layer states per token, with a mask; CFG above guidance 0."""

    family = "krea2"
    img2img_refusal = ("Krea 2 has no img2img pipeline in diffusers: drop the img2img reference, "
                       "or use the z-image, qwen-image, chroma1-hd or sd3.5-large profile")

    def encode(self, pipe, prompt, negative, cfg, clip_skip, device):
        length = text_length(pipe, 512)
        pos, mask = pipe.encode_prompt(prompt=prompt, device=device, num_images_per_prompt=1, max_sequence_length=length)
        embeds = {"prompt_embeds": pos, "prompt_embeds_mask": mask}
        if cfg:
            neg, neg_mask = pipe.encode_prompt(prompt=negative or "", device=device, num_images_per_prompt=1,
                                               max_sequence_length=length)
            embeds.update(negative_prompt_embeds=neg, negative_prompt_embeds_mask=neg_mask)
        return embeds


ADAPTERS: dict[str, FamilyAdapter] = watch_family_table({
    a.family: a
    for a in (ZImageAdapter(), FluxAdapter(), SD15Adapter(), SDXLAdapter(), Flux2Adapter(), Flux2KleinAdapter(),
              QwenImageAdapter(), ChromaAdapter(), SD3Adapter(), Krea2Adapter())
})


def register_adapter(adapter: FamilyAdapter) -> None:
    """Add the diffusers adapter of a family registered in reverie.profiles (a plugin's, a test's)."""
    if adapter.family in BUILT_IN_FAMILIES:  # a plugin adds a family under its own name, never swaps reverie's
        raise ReverieError(f"adapter for built-in family {adapter.family!r}: register a family of your own")
    if adapter.family not in FAMILIES:
        raise ReverieError(f"adapter for unknown family {adapter.family!r}: register_family it first")
    ADAPTERS[adapter.family] = adapter


def adapter_for(family: str) -> FamilyAdapter:
    # Every family in reverie.profiles has an adapter (tests/test_render_profiles.py checks it).
    return ADAPTERS[family]
