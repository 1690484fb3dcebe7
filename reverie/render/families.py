"""How the diffusers engine drives each model family: one adapter per family.

Everything that differs between families in diffusers lives here: the img2img and control-net
pipeline classes, how a prompt is encoded into the keyword arguments the pipeline takes, and what
a blind step zeroes and swaps back. The family's data (CFG convention, flow-matching) is in
reverie.profiles. Adding a family is a `Family` and its profiles there, and one adapter here.
"""

from __future__ import annotations

from typing import Any, Optional

from reverie.profiles import FAMILIES, Family

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


def zeroed(embeds: Embeds) -> Embeds:
    import torch

    return {k: ([torch.zeros_like(t) for t in v] if isinstance(v, list) else torch.zeros_like(v)) for k, v in embeds.items()}


class FamilyAdapter:
    """The diffusers side of one family. Subclasses set the class names and override what differs."""

    family: str
    # diffusers class for img2img built from the loaded pipeline's components; None: AutoPipelineForImage2Image.
    img2img_pipeline: Optional[str] = None
    # Control net model and pipeline classes; None: canny/depth/pose are refused for this family.
    controlnet_model: Optional[str] = None
    controlnet_pipeline: Optional[str] = None

    @property
    def traits(self) -> Family:
        return FAMILIES[self.family]

    def img2img(self, pipe):
        import diffusers

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

    def blind(self, real: Embeds, cfg: bool) -> tuple[Embeds, Embeds]:
        """Call kwargs for the blind first steps, and what the step-end callback swaps in after them.

        The callback hands back tensors in the form the denoising loop holds them.
        """
        positive = {k: v for k, v in real.items() if not k.startswith("negative")}
        return {**real, **zeroed(positive)}, {"prompt_embeds": real["prompt_embeds"]}


class ZImageAdapter(FamilyAdapter):
    family = "z-image"
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


ADAPTERS: dict[str, FamilyAdapter] = {a.family: a for a in (ZImageAdapter(), FluxAdapter(), SD15Adapter(), SDXLAdapter())}


def adapter_for(family: str) -> FamilyAdapter:
    # Every family in reverie.profiles has an adapter (tests/test_render_profiles.py checks it).
    return ADAPTERS[family]
