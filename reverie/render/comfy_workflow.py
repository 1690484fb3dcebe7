"""ComfyUI API-format workflows for each model profile, built from a RenderSpec.

A workflow is a dict of node id -> {"class_type", "inputs"}; an input that comes from another
node is [node_id, output_index]. These are the graphs ComfyUI users wire by hand for each
family (the ones in ComfyUI's own example workflows), so a server set up for them just works.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from reverie.profiles import Profile, watch_family_table
from reverie.types import RenderSpec, ReverieError

# Files each family needs beyond what the profile names; `--comfy-file KEY=NAME` overrides any.
FAMILY_FILES: dict[str, dict[str, str]] = {
    "z-image": {"weight_dtype": "default", "model_patch": "Z-Image-Turbo-Fun-Controlnet-Union.safetensors"},
    "flux": {
        "weight_dtype": "default",
        "clip_l": "clip_l.safetensors",
        "t5": "t5xxl_fp8_e4m3fn.safetensors",
        "vae": "ae.safetensors",
    },
    "sdxl": {
        "controlnet_canny": "controlnet-canny-sdxl-1.0.safetensors",
        "controlnet_depth": "controlnet-depth-sdxl-1.0.safetensors",
        "controlnet_pose": "OpenPoseXL2.safetensors",
    },
    "sd15": {
        "controlnet_canny": "control_v11p_sd15_canny.pth",
        "controlnet_depth": "control_v11f1p_sd15_depth.pth",
        "controlnet_pose": "control_v11p_sd15_openpose.pth",
    },
    "flux2": {"weight_dtype": "default"},
    "flux2-klein": {"weight_dtype": "default"},
    "qwen-image": {"weight_dtype": "default"},
    "chroma": {"weight_dtype": "default"},
    "krea2": {"weight_dtype": "default"},
    "sd3": {"controlnet_canny": "sd3.5_large_controlnet_canny.safetensors",
            "controlnet_depth": "sd3.5_large_controlnet_depth.safetensors"},
}


@dataclass(frozen=True)
class ComfyFamily:
    """How ComfyUI wires one family: the graph of its official text-to-image template, in KSampler form."""

    # "unet": UNETLoader + CLIPLoader(type) + VAELoader; "unet-dual": DualCLIPLoader; "checkpoint": one file.
    loader: str
    latent: str  # the empty-latent node the template uses
    scheduler: str  # KSampler scheduler for samplers that do not name one (karras)
    clip_type: str = ""
    # The node that sets --shift, and the shift the template sets when the profile leaves it to the model
    # (None: no node then). A checkpoint's own shift (`builtin_shift`) needs no node.
    shift_node: str = ""
    default_shift: Optional[float] = None
    builtin_shift: Optional[float] = None
    guidance_node: bool = False  # distilled guidance goes in FluxGuidance, and the KSampler CFG is 1
    t5_options: bool = False  # T5TokenizerOptions(min_padding 0, min_length 0), as Chroma's template
    control: str = ""  # "model_patch" | "controlnet" | "": canny/depth/pose refused in one line
    template: str = ""  # ComfyUI's official template the graph follows (comfyui-workflow-templates)


# The workflow table: one entry per family ComfyUI runs natively. Differences from each template are
# named in tests/test_comfy_templates.py and docs/models.md.
WORKFLOWS: dict[str, ComfyFamily] = {
    "z-image": ComfyFamily("unet", "EmptySD3LatentImage", "simple", clip_type="lumina2",
                           shift_node="ModelSamplingAuraFlow", control="model_patch",
                           template="image_z_image_turbo.json"),
    "flux": ComfyFamily("unet-dual", "EmptySD3LatentImage", "simple", clip_type="flux", guidance_node=True,
                        control="controlnet"),
    "sdxl": ComfyFamily("checkpoint", "EmptyLatentImage", "normal", control="controlnet"),
    "sd15": ComfyFamily("checkpoint", "EmptyLatentImage", "normal", control="controlnet"),
    "flux2": ComfyFamily("unet", "EmptyFlux2LatentImage", "simple", clip_type="flux2", guidance_node=True,
                         template="image_flux2_text_to_image.json"),
    "flux2-klein": ComfyFamily("unet", "EmptyFlux2LatentImage", "simple", clip_type="flux2",
                               template="image_flux2_klein_text_to_image.json"),
    "qwen-image": ComfyFamily("unet", "EmptySD3LatentImage", "simple", clip_type="qwen_image",
                              shift_node="ModelSamplingAuraFlow", default_shift=3.1,
                              template="image_qwen_Image_2512.json"),
    "chroma": ComfyFamily("unet", "EmptySD3LatentImage", "beta", clip_type="chroma",
                          shift_node="ModelSamplingAuraFlow", default_shift=1.0, t5_options=True,
                          template="image_chroma_text_to_image.json"),
    "sd3": ComfyFamily("checkpoint", "EmptySD3LatentImage", "sgm_uniform", shift_node="ModelSamplingSD3",
                       builtin_shift=3.0, control="controlnet", template="sd3.5_simple_example.json"),
    "krea2": ComfyFamily("unet", "EmptyLatentImage", "simple", clip_type="krea2",
                         template="image_krea2_turbo_t2i.json"),
}

# reverie sampler name -> (ComfyUI sampler_name, scheduler). Unless the name says karras, flow
# models (Z-Image, FLUX) get the "simple" schedule and UNet models the "normal" one.
SAMPLERS: dict[str, tuple[str, str]] = {
    "euler": ("euler", "simple"),
    "res_multistep": ("res_multistep", "simple"),
    "dpmpp_2m": ("dpmpp_2m", "normal"),
    "dpmpp_2m_karras": ("dpmpp_2m", "karras"),
    "dpmpp_2m_sde_karras": ("dpmpp_2m_sde", "karras"),
    "euler_ancestral": ("euler_ancestral", "normal"),
    "unipc": ("uni_pc", "normal"),
}

CONTROL_NET_KINDS = ("canny", "depth", "pose")


watch_family_table(WORKFLOWS)  # a family plugin that fails leaves no row behind
watch_family_table(FAMILY_FILES)


def register_workflow(family: str, wiring: ComfyFamily, files: Optional[dict[str, str]] = None) -> None:
    """Add how ComfyUI wires a family registered in reverie.profiles (a plugin's, a test's), and the
    files it needs beyond what its profiles name."""
    from reverie.profiles import BUILT_IN_FAMILIES, FAMILIES

    if family in BUILT_IN_FAMILIES:  # a plugin adds a family under its own name, never swaps reverie's
        raise ReverieError(f"workflow for built-in family {family!r}: register a family of your own")
    if family not in FAMILIES:
        raise ReverieError(f"workflow for unknown family {family!r}: register_family it first")
    WORKFLOWS[family] = wiring
    FAMILY_FILES[family] = dict(files or {})


def comfy_files(profile: Profile, overrides: Optional[dict] = None) -> dict[str, str]:
    """The model file names for a profile: family defaults, then the profile, then the user's."""
    return {**FAMILY_FILES.get(profile.family, {}), **profile.comfy_files, **(overrides or {})}


def sampler_for(spec: RenderSpec, profile: Profile) -> tuple[str, str]:
    try:
        sampler_name, scheduler = SAMPLERS[spec.sampler]
    except KeyError:
        raise ReverieError(f"sampler {spec.sampler!r} has no ComfyUI equivalent here: use one of {', '.join(SAMPLERS)}") from None
    if scheduler != "karras":
        scheduler = WORKFLOWS[profile.family].scheduler
    return sampler_name, scheduler


def comfy_cfg(spec: RenderSpec, profile: Profile) -> float:
    """The KSampler CFG for a spec whose guidance is in diffusers terms."""
    if WORKFLOWS[profile.family].guidance_node:
        return 1.0  # FLUX guidance is distilled; it goes in FluxGuidance, not CFG
    if spec.guidance == profile.guidance:
        return float(profile.comfy_cfg)
    # The family's own diffusers -> CFG mapping (Z-Image: guidance 2.0 is CFG 3.0), as PNG Info
    # shows it; diffusers runs no classifier-free guidance at or below CFG 1, nor does ComfyUI.
    return max(1.0, float(profile.traits.cfg_scale(spec.guidance)))


class _Graph:
    """Numbers nodes in the order they are added, so the same spec gives the same JSON."""

    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}

    def add(self, class_type: str, **inputs: Any) -> str:
        node_id = str(len(self.nodes) + 1)
        self.nodes[node_id] = {"class_type": class_type, "inputs": inputs}
        return node_id


def _need(files: dict, key: str, what: str) -> str:
    name = files.get(key)
    if not name:
        raise ReverieError(f"no ComfyUI {what} file is configured: pass --comfy-file {key}=NAME")
    return name


def build_workflow(spec: RenderSpec, profile: Profile, files: dict[str, str], image_name: Optional[str] = None) -> dict:
    """The API-format workflow that renders one spec. `image_name` is the uploaded control image."""
    sampler_name, scheduler = sampler_for(spec, profile)
    cfg = comfy_cfg(spec, profile)
    control = spec.control
    if control is not None and image_name is None:
        raise ReverieError("internal: a control image must be uploaded before its workflow is built")
    if control is not None and control.kind not in (*CONTROL_NET_KINDS, "img2img"):
        raise ReverieError(f"control kind {control.kind!r} cannot be rendered by ComfyUI: use canny, depth, pose or img2img")
    from reverie.profiles import EDITORS, FAMILIES

    family = FAMILIES.get(profile.family)
    if profile.name in EDITORS and family is not None and profile.pipeline != family.pipeline:
        # An editor-only profile (Qwen-Image-Edit, Kontext) shares its family's loaders but not its
        # graph: the family's text-to-image workflow would silently ignore the source image.
        raise ReverieError(f"no ComfyUI editing workflow for {profile.name}: edit with --engine diffusers")
    g = _Graph()

    # Loaders: model, text encoder, VAE as (node, output) pairs.
    wiring = WORKFLOWS.get(profile.family)
    if wiring is None:
        raise ReverieError(f"ComfyUI has no workflow for {profile.name} here: render it with --engine diffusers")
    if wiring.loader == "checkpoint":
        ckpt = g.add("CheckpointLoaderSimple", ckpt_name=_need(files, "checkpoint", "checkpoint"))
        model, clip, vae = [ckpt, 0], [ckpt, 1], [ckpt, 2]
        if profile.clip_skip > 1:
            clip = [g.add("CLIPSetLastLayer", clip=clip, stop_at_clip_layer=-profile.clip_skip), 0]
    else:
        unet = g.add("UNETLoader", unet_name=_need(files, "unet", "unet"), weight_dtype=files.get("weight_dtype", "default"))
        if wiring.loader == "unet-dual":
            clip_node = g.add("DualCLIPLoader", clip_name1=_need(files, "clip_l", "clip_l"),
                              clip_name2=_need(files, "t5", "t5"), type=files.get("clip_type", wiring.clip_type))
        else:
            clip_node = g.add("CLIPLoader", clip_name=_need(files, "clip", "clip"), type=files.get("clip_type", wiring.clip_type))
        vae = [g.add("VAELoader", vae_name=_need(files, "vae", "vae")), 0]
        model, clip = [unet, 0], [clip_node, 0]
    if wiring.t5_options:
        clip = [g.add("T5TokenizerOptions", clip=clip, min_padding=0, min_length=0), 0]
    shift = spec.shift if spec.shift is not None else wiring.default_shift
    shifted = bool(wiring.shift_node and shift is not None and shift != wiring.builtin_shift)
    # With a model-patch ControlNet (Z-Image's union) the shift goes on after the patch, as
    # ComfyUI's template wires it.
    patched = wiring.control == "model_patch" and control is not None and control.kind in CONTROL_NET_KINDS
    if shifted and not patched:
        model = [g.add(wiring.shift_node, model=model, shift=float(shift)), 0]

    positive = [g.add("CLIPTextEncode", text=spec.prompt, clip=clip), 0]
    if wiring.guidance_node and spec.guidance > 0:
        positive = [g.add("FluxGuidance", conditioning=positive, guidance=float(spec.guidance)), 0]
    zeroed: Optional[list] = None
    if profile.negative or cfg > 1.0:
        negative = [g.add("CLIPTextEncode", text=spec.negative, clip=clip), 0]
    else:
        # At CFG 1 the negative is never used; a zeroed positive is what ComfyUI's templates wire.
        zeroed = negative = [g.add("ConditioningZeroOut", conditioning=positive), 0]

    image = [g.add("LoadImage", image=image_name), 0] if control is not None else None
    if control is not None and control.kind in CONTROL_NET_KINDS:
        if not wiring.control:
            raise ReverieError(f"{control.kind} control has no ComfyUI workflow for {profile.name} in reverie: "
                               "use an img2img reference, or the z-image-turbo, sd3.5-large, sdxl or sd15 profile")
        if wiring.control == "model_patch":
            # Z-Image's union ControlNet is a model patch in ComfyUI, not a ControlNet model.
            patch = g.add("ModelPatchLoader", name=_need(files, "model_patch", "model_patch"))
            model = [g.add("QwenImageDiffsynthControlnet", model=model, model_patch=[patch, 0], vae=vae,
                           image=image, strength=float(control.strength)), 0]
            if shifted:
                model = [g.add(wiring.shift_node, model=model, shift=float(shift)), 0]
        else:
            key = f"controlnet_{control.kind}"
            net = g.add("ControlNetLoader", control_net_name=_need(files, key, f"{control.kind} ControlNet"))
            applied = g.add("ControlNetApplyAdvanced", positive=positive, negative=negative, control_net=[net, 0],
                            image=image, strength=float(control.strength), start_percent=0.0, end_percent=1.0, vae=vae)
            positive, negative = [applied, 0], [applied, 1]

    denoise = 1.0
    if control is not None and control.kind == "img2img":
        latent = [g.add("VAEEncode", pixels=image, vae=vae), 0]
        denoise = float(control.strength)
    else:
        latent = [g.add(wiring.latent, width=spec.width, height=spec.height, batch_size=1), 0]

    common = dict(cfg=cfg, sampler_name=sampler_name, scheduler=scheduler)
    if spec.embed_noise:  # ComfyUI's graph has no node for it: refused, never silently dropped
        raise ReverieError(f"embedding noise ({spec.embed_noise}) is a diffusers-engine knob that ComfyUI cannot apply: "
                           "render or reproduce this spec with --engine diffusers (or tiny)")
    if spec.noise_lowfreq:  # ComfyUI draws its own noise from the seed: the components would be dropped
        raise ReverieError("this spec's initial noise was searched (noise components): ComfyUI cannot apply them; "
                           "render or reproduce it with --engine diffusers (or tiny)")
    if spec.handoff_steps:  # one model per graph here: the base model's first steps would be dropped
        raise ReverieError(f"this spec runs its first {spec.handoff_steps} step(s) on the base model (handoff steps): "
                           "ComfyUI cannot here; render or reproduce it with --engine diffusers (or tiny)")
    blind = max(0, min(int(spec.blind_steps), spec.steps - 1))
    if blind:
        if zeroed is None:
            zeroed = [g.add("ConditioningZeroOut", conditioning=positive), 0]
        # KSamplerAdvanced has no denoise: a partial denoise is the tail of a longer schedule.
        total = spec.steps if denoise >= 1.0 else max(spec.steps, math.ceil(spec.steps / max(denoise, 1e-3)))
        start = total - spec.steps
        first = g.add("KSamplerAdvanced", model=model, add_noise="enable", noise_seed=spec.seed, steps=total, **common,
                      positive=zeroed, negative=negative, latent_image=latent, start_at_step=start,
                      end_at_step=start + blind, return_with_leftover_noise="enable")
        sampled = g.add("KSamplerAdvanced", model=model, add_noise="disable", noise_seed=spec.seed, steps=total, **common,
                        positive=positive, negative=negative, latent_image=[first, 0], start_at_step=start + blind,
                        end_at_step=total, return_with_leftover_noise="disable")
    else:
        sampled = g.add("KSampler", model=model, seed=spec.seed, steps=spec.steps, **common, positive=positive,
                        negative=negative, latent_image=latent, denoise=denoise)
    decoded = g.add("VAEDecode", samples=[sampled, 0], vae=vae)
    g.add("SaveImage", images=[decoded, 0], filename_prefix="reverie")
    return g.nodes


def output_node(workflow: dict) -> str:
    return next(i for i, node in workflow.items() if node["class_type"] == "SaveImage")


# ComfyUI's TextGenerate runs a loaded text encoder as a language model: a family whose encoder is
# an instruction-tuned chat model (reverie.profiles: Family.chat_encoder) can write its own prompts.


def textgen_workflow(files: dict[str, str], prompt: str, max_length: int, sampling: dict) -> dict:
    """TextGenerate over the profile's text encoder; the answer comes back from PreviewAny.

    `sampling` holds temperature, top_k, top_p, min_p, repetition_penalty and seed: the inputs
    of TextGenerate's "on" sampling mode, which the API format writes as "sampling_mode.NAME".
    """
    g = _Graph()
    clip = g.add("CLIPLoader", clip_name=_need(files, "clip", "clip"), type=files.get("clip_type", "lumina2"))
    text = g.add("TextGenerate", clip=[clip, 0], prompt=prompt, max_length=int(max_length), sampling_mode="on",
                 **{f"sampling_mode.{k}": v for k, v in sampling.items()}, thinking=False, use_default_template=True)
    g.add("PreviewAny", source=[text, 0])
    return g.nodes


# -- edits: a render that starts from a source image (RenderSpec.source) ---------------------------
# The official template (comfyui-workflow-templates) each editing graph follows node for node, and
# where reverie's graph differs, why. tests/test_comfy_edit_templates.py asserts each as it stands.
EDIT_TEMPLATES: dict[str, str] = {
    "qwen-image-edit-2511": "image_qwen_image_edit_2511.json",
    "flux1-kontext-dev": "flux_kontext_dev_basic.json",
    "flux2-klein-4b": "image_flux2_klein_image_edit_4b_distilled.json",
    # No official Z-Image img2img or inpainting template: loaders, shift and sampler follow the
    # text-to-image one; the mask nodes follow image_qwen_image_instantx_inpainting_controlnet.json.
    "z-image-turbo": "image_z_image_turbo.json",
}
EDIT_DIFFERENCES: dict[str, tuple[str, ...]] = {
    # Every editor: reverie uploads the source already fitted to the request's size (the diffusers
    # engine edits the same pixels), so the templates' own scaling nodes are left out.
    "*": ("no FluxKontextImageScale / ImageScaleToTotalPixels / GetImageSize: the source is uploaded at the "
          "request's size and the latent is sized from the request",
          "one source image: the templates' second (optional) reference image is left out"),
    "qwen-image-edit-2511": ("no Lightning LoRA switch (LoraLoaderModelOnly, ComfySwitchNode, Primitive*): the "
                             "template's 4-step option, off by default; reverie runs the profile's 40 steps at CFG 4",),
    "flux1-kontext-dev": ("no ImageStitch: one reference image",
                          "steps: the profile's 28 (the model card's) where the template has 20"),
    "flux2-klein-4b": ("KSampler form: KSampler(euler, simple) stands for the template's SamplerCustomAdvanced, "
                       "CFGGuider(1), KSamplerSelect(euler), RandomNoise and Flux2Scheduler, as reverie's FLUX.2 "
                       "text-to-image graph does",),
    "z-image-turbo": ("img2img: VAEEncode of the source and KSampler denoise = --strength, in place of "
                      "EmptySD3LatentImage",
                      "inpainting: LoadImageMask (red channel, white = change), SetLatentNoiseMask and "
                      "ImageCompositeMasked, as the Qwen-Image inpainting template wires them (without its ControlNet)"),
}


def build_edit_workflow(spec: RenderSpec, profile: Profile, files: dict[str, str], image_name: str,
                        mask_name: Optional[str] = None) -> dict:
    """The API-format workflow of an edit: `image_name` is the uploaded source, `mask_name` its mask
    (white = change). Each graph is its official template's (EDIT_TEMPLATES), less EDIT_DIFFERENCES."""
    if spec.source is None:
        raise ReverieError("internal: build_edit_workflow is for a spec with a source image")
    if profile.name not in EDIT_TEMPLATES:
        raise ReverieError(f"{profile.name} cannot edit images on ComfyUI: use --profile "
                           f"{' or '.join(n for n in EDIT_TEMPLATES)}")
    if mask_name is not None and profile.name != "z-image-turbo":
        raise ReverieError(f"inpainting (--mask) with {profile.name} has no ComfyUI workflow in reverie: drop --mask, "
                           "edit with --engine diffusers, or inpaint with --profile z-image-turbo")
    if spec.embed_noise or spec.noise_lowfreq or spec.blind_steps:
        raise ReverieError("an edit on ComfyUI takes no embedding noise, noise search or blind steps: "
                           "render it with --engine diffusers")
    sampler_name, scheduler = sampler_for(spec, profile)
    g = _Graph()
    unet = [g.add("UNETLoader", unet_name=_need(files, "unet", "unet"),
                  weight_dtype=files.get("weight_dtype", "default")), 0]
    wiring = WORKFLOWS[profile.family]
    if wiring.loader == "unet-dual":
        clip = [g.add("DualCLIPLoader", clip_name1=_need(files, "clip_l", "clip_l"), clip_name2=_need(files, "t5", "t5"),
                      type=files.get("clip_type", wiring.clip_type)), 0]
    else:
        clip = [g.add("CLIPLoader", clip_name=_need(files, "clip", "clip"),
                      type=files.get("clip_type", wiring.clip_type)), 0]
    vae = [g.add("VAELoader", vae_name=_need(files, "vae", "vae")), 0]
    image = [g.add("LoadImage", image=image_name), 0]
    encoded = [g.add("VAEEncode", pixels=image, vae=vae), 0]
    model, denoise, mask = unet, 1.0, None

    if profile.name == "qwen-image-edit-2511":
        shift = spec.shift if spec.shift is not None else wiring.default_shift
        model = [g.add("ModelSamplingAuraFlow", model=model, shift=float(shift)), 0]
        model = [g.add("CFGNorm", model=model, strength=1.0), 0]
        conds = []
        for text in (spec.prompt, spec.negative):
            cond = g.add("TextEncodeQwenImageEditPlus", clip=clip, prompt=text, vae=vae, image1=image)
            conds.append([g.add("FluxKontextMultiReferenceLatentMethod", conditioning=[cond, 0],
                                reference_latents_method="index_timestep_zero"), 0])
        positive, negative = conds
        latent, cfg = encoded, float(spec.guidance)
    elif profile.name == "flux1-kontext-dev":
        text = [g.add("CLIPTextEncode", text=spec.prompt, clip=clip), 0]
        referenced = [g.add("ReferenceLatent", conditioning=text, latent=encoded), 0]
        positive = [g.add("FluxGuidance", conditioning=referenced, guidance=float(spec.guidance)), 0]
        negative = [g.add("ConditioningZeroOut", conditioning=text), 0]
        latent, cfg = encoded, 1.0
    elif profile.name == "flux2-klein-4b":
        text = [g.add("CLIPTextEncode", text=spec.prompt, clip=clip), 0]
        zeroed = [g.add("ConditioningZeroOut", conditioning=text), 0]
        positive = [g.add("ReferenceLatent", conditioning=text, latent=encoded), 0]
        negative = [g.add("ReferenceLatent", conditioning=zeroed, latent=encoded), 0]
        latent = [g.add("EmptyFlux2LatentImage", width=spec.width, height=spec.height, batch_size=1), 0]
        cfg = 1.0
    else:  # Z-Image Turbo img2img, or inpainting inside the mask
        shift = spec.shift if spec.shift is not None else wiring.default_shift
        if shift is not None:
            model = [g.add("ModelSamplingAuraFlow", model=model, shift=float(shift)), 0]
        positive = [g.add("CLIPTextEncode", text=spec.prompt, clip=clip), 0]
        cfg = comfy_cfg(spec, profile)
        negative = ([g.add("CLIPTextEncode", text=spec.negative, clip=clip), 0] if cfg > 1.0
                    else [g.add("ConditioningZeroOut", conditioning=positive), 0])
        latent, denoise = encoded, float(spec.source.strength)
        if mask_name is not None:
            mask = [g.add("LoadImageMask", image=mask_name, channel="red"), 0]
            latent = [g.add("SetLatentNoiseMask", samples=latent, mask=mask), 0]
    sampled = g.add("KSampler", model=model, seed=spec.seed, steps=spec.steps, cfg=cfg, sampler_name=sampler_name,
                    scheduler=scheduler, positive=positive, negative=negative, latent_image=latent, denoise=denoise)
    decoded = [g.add("VAEDecode", samples=[sampled, 0], vae=vae), 0]
    if mask is not None:
        # Outside the mask, the source's own pixels (the diffusers engine pastes them back too).
        decoded = [g.add("ImageCompositeMasked", destination=image, source=decoded, x=0, y=0, resize_source=False,
                         mask=mask), 0]
    g.add("SaveImage", images=decoded, filename_prefix="reverie")
    return g.nodes
