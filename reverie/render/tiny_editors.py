"""Tiny instruction editors: the real diffusers editing pipelines on tiny random weights.

Built in code from fixed seeds, like the tiny Z-Image (reverie.render.tiny), saved once as an
ordinary diffusers folder and loaded by the diffusers engine as real weights would be: tests run
the editing code paths (reference images, the editor's own prompt encoding) on any CPU.

- FLUX.2 [klein]: its family's tiny model (reverie.render.tiny), whose Flux2KleinPipeline edits as
  it is: the source is one of its reference images.
- FLUX.1 Kontext: FluxKontextPipeline (Flux transformer, CLIP and T5 encoders).
"""

from __future__ import annotations

from pathlib import Path

from reverie.render.tiny import build_tokenizer, ensure_tiny_family, save_once

TINY_KONTEXT_DIR_NAME = "tiny-flux1-kontext-v1"


def build_tiny_flux1_kontext():
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip_tokenizer = build_tokenizer(max_length=77)
    t5_tokenizer = build_tokenizer(max_length=64)
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8])
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, projection_dim=32,
        vocab_size=len(clip_tokenizer), max_position_embeddings=77, pad_token_id=clip_tokenizer.pad_token_id,
        eos_token_id=clip_tokenizer.convert_tokens_to_ids("<|im_end|>")))
    torch.manual_seed(0)
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=len(t5_tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        pad_token_id=t5_tokenizer.pad_token_id))
    torch.manual_seed(0)
    vae = AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1, latent_channels=1,
        norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    return FluxKontextPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                               text_encoder_2=text_encoder_2, tokenizer=clip_tokenizer, tokenizer_2=t5_tokenizer,
                               transformer=transformer)


# profile -> (folder name, builder): the tiny stand-in of each instruction editor whose pipeline
# class is not its family's text-to-image one.
TINY_EDITORS = {
    "flux1-kontext-dev": (TINY_KONTEXT_DIR_NAME, build_tiny_flux1_kontext),
}


def has_tiny_editor(profile: str) -> bool:
    return profile in TINY_EDITORS


def ensure_tiny_editor(models_dir: Path, profile: str) -> Path:
    """Save the tiny editor of a profile once; the diffusers engine loads it as --model-path. An
    editor that edits with its family's own pipeline (FLUX.2 [klein]) gets the family's tiny model."""
    if profile not in TINY_EDITORS:
        from reverie.profiles import get_profile

        return ensure_tiny_family(Path(models_dir), get_profile(profile).family)
    name, build = TINY_EDITORS[profile]
    return save_once(Path(models_dir) / name, build)
