"""The `tiny` engine: the real diffusers Z-Image pipeline on a tiny random-weight model.

The model is built in code from a fixed seed, saved once as an ordinary diffusers folder under
the home, and then loaded by the same code path as real weights. It renders meaningless
pictures in well under a second on any CPU, which is what tests and offline demos need.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from reverie.profiles import watch_family_table
from reverie.render.diffusers_engine import DiffusersEngine
from reverie.types import ReverieError

TINY_VERSION = "2"  # 2: a byte-level tokenizer (1 was word-level and could not spell JSON)
TINY_DIR_NAME = f"tiny-z-image-v{TINY_VERSION}"
TINY_CONTROLNET_DIR_NAME = "tiny-z-image-controlnet-v1"
TINY_SD15_DIR_NAME = "tiny-sd15-v2"  # 2: the byte-level tokenizer

# Words the tokenizer keeps whole, so different ideas give different conditioning; other text
# is spelled in bytes. The pictures carry no meaning either way.
_WORDS = (
    "a an the of in on at with and or under over near by from to into through behind beside "
    "fox cat dog bird horse woman man girl boy child knight robot dragon tree forest city street "
    "river lake sea ocean mountain sky cloud clouds rain snow fog storm sun moon star stars night "
    "day morning evening sunset sunrise light lights shadow shadows glow neon lamp fire water "
    "red orange yellow green blue purple pink white black gray grey gold silver brown teal "
    "warm cool soft hard bright dark dim vivid muted pastel golden misty wet dry old young "
    "small large tiny huge tall wide close up portrait landscape photo photograph painting "
    "illustration watercolor oil ink sketch render cinematic film analog digital 35mm 50mm "
    "lens bokeh depth field focus sharp detailed detail texture fur hair eyes face hands "
    "standing sitting running walking flying sleeping looking holding wearing coat hat dress "
    "armor sword book cup window door house castle bridge road car train boat garden flowers "
    "flower grass leaves leaf wood stone glass metal reflection reflections puddle puddles "
    "composition framing centered rule thirds shot angle low high wide-angle view background "
    "foreground atmosphere mood calm quiet serene melancholy dramatic joyful mysterious cozy "
    "style palette colour color colors tones contrast lighting rim backlit volumetric ambient "
    "highly quality best masterpiece realistic photorealistic stylized anime art concept "
    "scene environment surroundings subject main secondary medium detailed, . ,"
).split()
_SPECIAL = ["[UNK]", "[PAD]", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(max_length: int = 512, chat_template: str = _CHAT_TEMPLATE):
    """A byte-level BPE tokenizer like Qwen3's own, with merges for the words above: any text,
    JSON punctuation included, round-trips, so the tiny encoder can also be run as a language model
    under constrained decoding (agents/local_llm.py)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(_SPECIAL + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    merges = []
    to_bytes = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    for word in sorted(set(_WORDS) - set(_SPECIAL)):
        for form in (word, " " + word):  # a word starting the text, and a word after a space
            pieces = to_bytes.pre_tokenize_str(form)[0][0]
            current = pieces[0]
            for ch in pieces[1:]:
                if current + ch not in vocab:
                    vocab[current + ch] = len(vocab)
                    merges.append((current, ch))
                current += ch
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="<|im_end|>",
        additional_special_tokens=_SPECIAL[2:],
    )
    fast.chat_template = chat_template
    fast.model_max_length = max_length
    return fast


def build_tiny_pipeline():
    """A ZImagePipeline with tiny random weights, identical on every machine (fixed seeds)."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    text_encoder = Qwen3Model(
        Qwen3Config(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=16,
            vocab_size=len(tokenizer),
            max_position_embeddings=1024,
            tie_word_embeddings=True,  # as in Qwen3-4B, Z-Image's encoder: the embeddings are also its output head
        )
    )
    torch.manual_seed(0)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=64,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        norm_eps=1e-5,
        qk_norm=True,
        cap_feat_dim=32,
        rope_theta=256.0,
        t_scale=1000.0,
        axes_dims=[16, 8, 8],
        axes_lens=[1024, 512, 512],
    )
    with torch.no_grad():
        # These two are allocated with torch.empty upstream; fix them so every build is identical.
        transformer.x_pad_token.copy_(torch.ones_like(transformer.x_pad_token))
        transformer.cap_pad_token.copy_(torch.ones_like(transformer.cap_pad_token))
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[16, 16, 16, 16],
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=8,
        sample_size=128,
        scaling_factor=0.3611,
        shift_factor=0.1159,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    return ZImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )


def build_tiny_controlnet():
    """A ZImageControlNetModel matching the tiny transformer (canny/depth/pose all go through it)."""
    import torch
    from diffusers import ZImageControlNetModel

    torch.manual_seed(1)
    controlnet = ZImageControlNetModel(
        control_layers_places=[0],
        control_refiner_layers_places=[0],
        control_in_dim=16,
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        dim=64,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        norm_eps=1e-5,
        qk_norm=True,
    )
    with torch.no_grad():
        # Upstream zero-initialises the control projections (a fresh control net changes
        # nothing); a trained one does not, so give these random values like the rest.
        for name, param in controlnet.named_parameters():
            if "before_proj" in name or "after_proj" in name:
                param.copy_(torch.randn_like(param) * 0.2)
    return controlnet


def build_tiny_sd15_pipeline():
    """A StableDiffusionPipeline with a tiny random UNet, CLIP text model and VAE."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_tokenizer(max_length=77)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        block_out_channels=[8, 16],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        )
    )
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000)
    return StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


# -- a tiny model of each family, from config (the shapes follow diffusers' own pipeline tests) ----------
_CHAT_TEMPLATE_PARTS = (
    # Chat messages whose content is a list of parts (FLUX.2 [dev]'s Mistral processor format) or a string.
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for part in m['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# The new families' tiny tokenizers cap text at this many tokens (the real ones pad to 256-512):
# attention over a long padded text costs a CPU seconds per step, and the pictures mean nothing anyway.
TINY_TEXT_LENGTH = 128

def _tiny_vae(latent_channels: int, cls_name: str = "AutoencoderKL", **extra):
    """A four-level VAE (8x, as the real ones) with few channels; a one-level VAE would leave
    full-resolution latents and make the transformer slow."""
    import diffusers
    import torch

    torch.manual_seed(0)
    return getattr(diffusers, cls_name)(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[8, 8, 8, 8], layers_per_block=1,
        latent_channels=latent_channels, norm_num_groups=4, sample_size=64, **extra)


def _tiny_wan_vae(z_dim: int = 4):
    """The Qwen-Image VAE (Krea 2 uses it too): causal 3D convolutions, 8x spatially."""
    import torch
    from diffusers import AutoencoderKLQwenImage

    torch.manual_seed(0)
    return AutoencoderKLQwenImage(base_dim=z_dim * 4, z_dim=z_dim, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                  temperal_downsample=[False, True, True], latents_mean=[0.0] * z_dim,
                                  latents_std=[1.0] * z_dim)


def _qwen3(tokenizer, layers: int, hidden: int = 16, causal_lm: bool = False):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model

    torch.manual_seed(0)
    config = Qwen3Config(hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=8, vocab_size=len(tokenizer),
                         max_position_embeddings=2048, tie_word_embeddings=True)
    return (Qwen3ForCausalLM if causal_lm else Qwen3Model)(config)


def build_tiny_flux2_klein():
    """Flux2KleinPipeline: a Qwen3 encoder tapped at layers 9, 18 and 27 (as the real one), a FLUX.2 transformer."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel

    tokenizer = build_tokenizer(max_length=TINY_TEXT_LENGTH)
    text_encoder = _qwen3(tokenizer, layers=27, causal_lm=True)
    torch.manual_seed(0)
    transformer = Flux2Transformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                          attention_head_dim=16, num_attention_heads=2, joint_attention_dim=48,
                                          timestep_guidance_channels=256, axes_dims_rope=[4, 4, 4, 4],
                                          guidance_embeds=False)
    vae = _tiny_vae(4, "AutoencoderKLFlux2", use_quant_conv=False, use_post_quant_conv=False)
    return Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), vae=vae,
                              text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer)


def build_tiny_flux2():
    """Flux2Pipeline: a Mistral 3 encoder tapped at layers 10, 20 and 30, guidance embedded in the transformer."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2Pipeline, Flux2Transformer2DModel
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    tokenizer = build_tokenizer(max_length=TINY_TEXT_LENGTH, chat_template=_CHAT_TEMPLATE_PARTS)
    torch.manual_seed(0)
    text_encoder = Mistral3ForConditionalGeneration(Mistral3Config(
        text_config={"model_type": "mistral", "vocab_size": len(tokenizer), "hidden_size": 16, "intermediate_size": 32,
                     "max_position_embeddings": 1024, "num_attention_heads": 2, "num_hidden_layers": 30,
                     "num_key_value_heads": 2, "head_dim": 8, "sliding_window": None,
                     "pad_token_id": tokenizer.pad_token_id},
        vision_config={"model_type": "pixtral", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "intermediate_size": 32, "image_size": 32, "patch_size": 8, "num_channels": 3},
        image_token_index=0, pad_token_id=tokenizer.pad_token_id))
    torch.manual_seed(0)
    transformer = Flux2Transformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                          attention_head_dim=16, num_attention_heads=2, joint_attention_dim=48,
                                          timestep_guidance_channels=256, axes_dims_rope=[4, 4, 4, 4])
    vae = _tiny_vae(4, "AutoencoderKLFlux2", use_quant_conv=False, use_post_quant_conv=False)
    return Flux2Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), vae=vae,
                         text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer)


def _tiny_qwen_transformer_and_scheduler():
    """Qwen-Image's transformer and its scheduler settings, shared by the text-to-image and edit builds."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel

    torch.manual_seed(0)
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                                              attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16,
                                              guidance_embeds=False, axes_dims_rope=(8, 4, 4))
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
                                                base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02,
                                                time_shift_type="exponential")
    return transformer, scheduler


def build_tiny_qwen_image():
    """QwenImagePipeline: a Qwen2.5-VL encoder, the Qwen-Image transformer and VAE."""
    import torch
    from diffusers import QwenImagePipeline
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = build_tokenizer(max_length=TINY_TEXT_LENGTH)
    torch.manual_seed(0)
    text_encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "num_key_value_heads": 2, "vocab_size": len(tokenizer), "max_position_embeddings": 2048,
                     "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
                     "rope_theta": 1000000.0},
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16},
        vocab_size=len(tokenizer))).eval()
    transformer, scheduler = _tiny_qwen_transformer_and_scheduler()
    return QwenImagePipeline(scheduler=scheduler, vae=_tiny_wan_vae(), text_encoder=text_encoder,
                             tokenizer=tokenizer, transformer=transformer)


def build_tiny_chroma():
    """ChromaPipeline: a T5 encoder and the Chroma transformer on a FLUX.1-style VAE."""
    import torch
    from diffusers import ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler
    from transformers import T5Config, T5EncoderModel

    tokenizer = build_tokenizer(max_length=TINY_TEXT_LENGTH)
    torch.manual_seed(0)
    text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2,
                                           num_heads=4, pad_token_id=tokenizer.pad_token_id)).eval()
    torch.manual_seed(0)
    transformer = ChromaTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                           attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                           axes_dims_rope=[4, 4, 8], approximator_hidden_dim=32,
                                           approximator_layers=1, approximator_num_channels=16)
    vae = _tiny_vae(16, scaling_factor=0.3611, shift_factor=0.1159)
    return ChromaPipeline(scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), vae=vae,
                          text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer)


def build_tiny_sd3():
    """StableDiffusion3Pipeline: two CLIPs and a T5, the MMDiT transformer (qk-normed, as 3.5 Large)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    clip_tokenizer, t5_tokenizer = build_tokenizer(max_length=77), build_tokenizer(max_length=TINY_TEXT_LENGTH)
    clip_config = CLIPTextConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 vocab_size=len(clip_tokenizer), max_position_embeddings=77, projection_dim=16,
                                 pad_token_id=clip_tokenizer.pad_token_id,
                                 eos_token_id=clip_tokenizer.convert_tokens_to_ids("<|im_end|>"))
    torch.manual_seed(0)
    text_encoder = CLIPTextModelWithProjection(clip_config)
    torch.manual_seed(1)
    text_encoder_2 = CLIPTextModelWithProjection(clip_config)
    torch.manual_seed(0)
    text_encoder_3 = T5EncoderModel(T5Config(vocab_size=len(t5_tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2,
                                             num_heads=4, pad_token_id=t5_tokenizer.pad_token_id))
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(sample_size=32, patch_size=2, in_channels=16, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                        joint_attention_dim=32, pooled_projection_dim=32, out_channels=16,
                                        pos_embed_max_size=64, qk_norm="rms_norm")
    vae = _tiny_vae(16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False)
    return StableDiffusion3Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
                                    text_encoder=text_encoder, tokenizer=clip_tokenizer, text_encoder_2=text_encoder_2,
                                    tokenizer_2=clip_tokenizer, text_encoder_3=text_encoder_3,
                                    tokenizer_3=t5_tokenizer, transformer=transformer)


def build_tiny_krea2():
    """Krea2Pipeline: a Qwen3-VL encoder tapped at three layers, the Krea 2 transformer, the Qwen-Image VAE."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, Krea2Pipeline, Krea2Transformer2DModel
    from transformers import Qwen3VLConfig, Qwen3VLModel

    tokenizer = build_tokenizer(max_length=TINY_TEXT_LENGTH)
    torch.manual_seed(0)
    text_encoder = Qwen3VLModel(Qwen3VLConfig(
        text_config={"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 3, "num_attention_heads": 2,
                     "num_key_value_heads": 2, "head_dim": 8, "vocab_size": len(tokenizer),
                     "max_position_embeddings": 2048},
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16},
        vocab_size=len(tokenizer))).eval()
    torch.manual_seed(0)
    transformer = Krea2Transformer2DModel(in_channels=16, num_layers=2, attention_head_dim=8, num_attention_heads=4,
                                          num_key_value_heads=2, intermediate_size=32, timestep_embed_dim=8,
                                          text_hidden_dim=16, num_text_layers=3, text_num_attention_heads=2,
                                          text_num_key_value_heads=1, text_intermediate_size=16,
                                          num_layerwise_text_blocks=1, num_refiner_text_blocks=1,
                                          axes_dims_rope=(4, 2, 2), rope_theta=1000.0)
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=6400)
    return Krea2Pipeline(scheduler=scheduler, vae=_tiny_wan_vae(), text_encoder=text_encoder, tokenizer=tokenizer,
                         transformer=transformer, text_encoder_select_layers=(1, 2, 3), is_distilled=True)


# family -> (folder name under <home>/models, builder). The tiny engine renders with the profile's own family.
TINY_FAMILIES: dict[str, tuple[str, object]] = {
    "z-image": (TINY_DIR_NAME, build_tiny_pipeline),
    "sd15": (TINY_SD15_DIR_NAME, build_tiny_sd15_pipeline),
    "flux2-klein": ("tiny-flux2-klein-v1", build_tiny_flux2_klein),
    "flux2": ("tiny-flux2-v1", build_tiny_flux2),
    "qwen-image": ("tiny-qwen-image-v1", build_tiny_qwen_image),
    "chroma": ("tiny-chroma-v1", build_tiny_chroma),
    "sd3": ("tiny-sd3-v1", build_tiny_sd3),
    "krea2": ("tiny-krea2-v1", build_tiny_krea2),
}


watch_family_table(TINY_FAMILIES)  # a family plugin that fails leaves no builder behind


def register_tiny(family: str, folder: str, build) -> None:
    """Add the tiny model of a family registered in reverie.profiles (a plugin's, a test's): `build()`
    returns its pipeline with random weights from fixed seeds; it is saved once as <models>/<folder>."""
    from reverie.profiles import BUILT_IN_FAMILIES, FAMILIES

    if family in BUILT_IN_FAMILIES:  # a plugin adds a family under its own name, never swaps reverie's
        raise ReverieError(f"tiny model for built-in family {family!r}: register a family of your own")
    if family not in FAMILIES:
        raise ReverieError(f"tiny model for unknown family {family!r}: register_family it first")
    TINY_FAMILIES[family] = (folder, build)


def ensure_tiny_family(models_dir: Path, family: str) -> Path:
    """The tiny model of a family, saved once under models_dir."""
    if family not in TINY_FAMILIES:
        raise ReverieError(f"the tiny engine has no model of the {family} family: use one of "
                           f"{', '.join(TINY_FAMILIES)}, or --engine diffusers with real weights")
    folder, build = TINY_FAMILIES[family]
    return save_once(Path(models_dir) / folder, build)


def save_once(target: Path, build) -> Path:
    """Save a built model as a diffusers folder once, atomically; later loads read it like real weights."""
    marker = target / ("model_index.json" if (target / "model_index.json").exists() else "config.json")
    if marker.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    import shutil

    _remove_dead_writers_leftovers(target)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    from reverie.render.diffusers_engine import quiet_libraries

    quiet_libraries()
    try:
        build().save_pretrained(tmp)
        (tmp / "reverie-tiny.json").write_text(json.dumps({"version": TINY_VERSION}))
    except BaseException:
        # A full disk or Ctrl-C half-way: no half-written folder stays behind.
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.replace(tmp, target)
    except OSError:
        # Another process saved it first; theirs is identical.
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _remove_dead_writers_leftovers(target: Path) -> None:
    """`NAME.tmp-PID` folders whose process is gone (killed while saving) are removed."""
    import shutil

    from reverie.processes import pid_alive

    for leftover in target.parent.glob(f"{target.name}.tmp-*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        if not pid_alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


TINY_Z_IMAGE_BASE_DIR_NAME = "tiny-z-image-base-v1"


def build_tiny_z_image_base():
    """The tiny Z-Image transformer again with other random weights (seed 1): the tiny Turbo's
    "base" of the same architecture, which --handoff-steps runs the first steps on."""
    import torch
    from diffusers import ZImageTransformer2DModel

    config = build_tiny_pipeline().transformer.config
    torch.manual_seed(1)
    transformer = ZImageTransformer2DModel.from_config(config)
    with torch.no_grad():  # allocated with torch.empty upstream, as in build_tiny_pipeline
        transformer.x_pad_token.copy_(torch.ones_like(transformer.x_pad_token))
        transformer.cap_pad_token.copy_(torch.ones_like(transformer.cap_pad_token))
    return transformer


def ensure_tiny_z_image_base(models_dir: Path) -> Path:
    return save_once(Path(models_dir) / TINY_Z_IMAGE_BASE_DIR_NAME, build_tiny_z_image_base)


def ensure_tiny_controlnet(models_dir: Path) -> Path:
    return save_once(Path(models_dir) / TINY_CONTROLNET_DIR_NAME, build_tiny_controlnet)


def ensure_tiny_sd15(models_dir: Path) -> Path:
    return save_once(Path(models_dir) / TINY_SD15_DIR_NAME, build_tiny_sd15_pipeline)


def ensure_tiny_weights(models_dir: Path) -> Path:
    """Save the tiny pipeline as a diffusers folder once; later loads read it like real weights."""
    return save_once(Path(models_dir) / TINY_DIR_NAME, build_tiny_pipeline)


# -- tiny instruction editors ---------------------------------------------------------------
# The real diffusers editing pipelines on tiny random weights, for the editors whose pipeline class
# is not their family's text-to-image one (FLUX.2 [klein] edits with its family's own tiny model):
# FLUX.1 Kontext is FluxKontextPipeline (Flux transformer, CLIP and T5 encoders); Qwen-Image-Edit
# 2511 is QwenImageEditPlusPipeline (a Qwen2.5-VL encoder with its processor built in code).
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


TINY_QWEN_EDIT_DIR_NAME = "tiny-qwen-image-edit-2511-v1"
_VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def build_tiny_qwen_image_edit():
    """QwenImageEditPlusPipeline (2511): a Qwen2.5-VL encoder that sees the source through its
    vision tower, with its processor (Qwen2VLProcessor: the Qwen2-VL image and video processors
    and the offline tokenizer with Qwen's vision tokens) built from configs, no files read."""
    import torch
    from diffusers import QwenImageEditPlusPipeline
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessor,
                              Qwen2VLProcessor, Qwen2VLVideoProcessor)

    # The pipeline's prompt template alone is ~200 byte-level tokens.
    tokenizer = build_tokenizer(max_length=1024)
    tokenizer.add_tokens(_VISION_TOKENS, special_tokens=True)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in _VISION_TOKENS}
    patches = {"patch_size": 14, "merge_size": 2, "temporal_patch_size": 2}
    # The pipeline hands the processor its source at ~384x384; at most 112x112 here keeps the
    # vision tokens few (16) on a CPU.
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(**patches, min_pixels=56 * 56,
                                                                       max_pixels=112 * 112),
                                 video_processor=Qwen2VLVideoProcessor(**patches), tokenizer=tokenizer)
    torch.manual_seed(0)
    text_encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "num_key_value_heads": 2, "vocab_size": len(tokenizer), "max_position_embeddings": 2048,
                     "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
                     "rope_theta": 1000000.0, "bos_token_id": None, "eos_token_id": tokenizer.eos_token_id},
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16,
                       "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
        vocab_size=len(tokenizer), image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])).eval()
    transformer, scheduler = _tiny_qwen_transformer_and_scheduler()
    return QwenImageEditPlusPipeline(scheduler=scheduler, vae=_tiny_wan_vae(), text_encoder=text_encoder,
                                     tokenizer=tokenizer, processor=processor, transformer=transformer)


# profile -> (folder name, builder): the tiny stand-in of each instruction editor whose pipeline
# class is not its family's text-to-image one.
TINY_EDITORS = {
    "flux1-kontext-dev": (TINY_KONTEXT_DIR_NAME, build_tiny_flux1_kontext),
    "qwen-image-edit-2511": (TINY_QWEN_EDIT_DIR_NAME, build_tiny_qwen_image_edit),
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


class TinyEngine(DiffusersEngine):
    name = "tiny"
    # Its pictures carry no meaning at any size; small keeps the embedded default fast on a CPU.
    max_side = 256

    @property
    def identity(self) -> str:
        # Built from fixed seeds, the same on every machine; where it is saved does not matter.
        return Path(self.model_path).name if self.profile.family != "z-image" else f"tiny-v{TINY_VERSION}"

    def __init__(self, models_dir: str | os.PathLike | None = None, profile: str = "z-image-turbo", **options):
        from reverie.profiles import get_profile

        if models_dir is None:
            from reverie.config import default_home

            models_dir = default_home() / "models"
        options.setdefault("device", "cpu")
        options.setdefault("dtype", "float32")
        # Built lazily: most runs never use a control image.
        self._models_dir = Path(models_dir)
        # A tiny random model of the profile's own family: the same pipeline class, adapter and size rules.
        # An instruction editor whose pipeline class is not its family's (Kontext, Qwen-Image-Edit)
        # gets its own tiny build.
        folder = (ensure_tiny_editor(Path(models_dir), profile) if has_tiny_editor(profile)
                  else ensure_tiny_family(Path(models_dir), get_profile(profile).family))
        super().__init__(model_path=str(folder), profile=profile, **options)

    def _model_label(self, where: str) -> str:
        # Never the profile's name: PNG Info and civitai would credit the real model for noise.
        return f"{Path(where).name} (random weights)"

    def handoff_weights(self) -> str:
        # The tiny Turbo's base is a tiny transformer of its own; other families fall back to real weights.
        if self.profile.family == "z-image":
            return str(ensure_tiny_z_image_base(self._models_dir))
        return super().handoff_weights()

    def _variant(self, control):
        if (control is not None and control.kind != "img2img" and self.controlnet_path is None
                and self.profile.family == "z-image"):
            self.controlnet_path = str(ensure_tiny_controlnet(self._models_dir))
        return super()._variant(control)
