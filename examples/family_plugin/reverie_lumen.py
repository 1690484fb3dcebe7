"""An example reverie family plugin: the family "lumen" and its profile "lumen-turbo".

reverie calls `register()` the first time a command looks up a profile, once per process. It adds
the family through reverie's four public seams and nothing else. Importing this module must stay
cheap (no torch): reverie loads it before it checks a user's input.
"""

from __future__ import annotations

from reverie.profiles import Family, Profile, register_family, register_profile

LUMEN = Family(name="lumen", label="Lumen", pipeline="ZImagePipeline", flow=True, cfg_offset=1.0,
               latent="flux1-16ch", prompt_advice="Lumen wants the light source named in the first sentence.")

LUMEN_TURBO = Profile(name="lumen-turbo", family="lumen", pipeline="ZImagePipeline", repo_id="example/Lumen-Turbo",
                      steps=3, guidance=0.0, sampler="euler", shift=2.0, multiple=16, max_side=1024,
                      prompt_style="natural", negative=False, comfy_cfg=1.0,
                      comfy_files={"unet": "lumen_turbo.safetensors", "clip": "qwen_3_4b.safetensors",
                                   "vae": "ae.safetensors"},
                      aliases=("lumen",), source="examples/family_plugin (a made-up model for the example)")


def build_tiny_lumen():
    """Z-Image's tiny pipeline with weights of its own (fixed seed): Lumen's pictures are not Z-Image's."""
    import torch
    from reverie.render.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    generator = torch.Generator().manual_seed(23)
    with torch.no_grad():
        for weight in pipe.transformer.parameters():
            weight.add_(0.05 * torch.randn(weight.shape, generator=generator, dtype=weight.dtype))
    return pipe


def register() -> None:
    # The render layer is imported here, when reverie asks, not when the entry point is read.
    from reverie.render.comfy_workflow import ComfyFamily, register_workflow
    from reverie.render.families import ZImageAdapter, register_adapter
    from reverie.render.tiny import register_tiny

    class LumenAdapter(ZImageAdapter):  # the diffusers side: Z-Image's prompt encoding and img2img
        family = "lumen"
        controlnet_model = None  # no control net for this family: canny/depth/pose are refused in one line
        controlnet_pipeline = None

    register_family(LUMEN)
    register_profile(LUMEN_TURBO)
    register_adapter(LumenAdapter())
    register_workflow("lumen", ComfyFamily("unet", "EmptySD3LatentImage", "simple", clip_type="lumina2",
                                           shift_node="ModelSamplingAuraFlow"), files={"weight_dtype": "default"})
    # The tiny engine's model of this family: random weights from fixed seeds, saved once as <models>/tiny-lumen-v1.
    register_tiny("lumen", "tiny-lumen-v1", build_tiny_lumen)
