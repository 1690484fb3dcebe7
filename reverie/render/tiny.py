"""The `tiny` engine: the real diffusers Z-Image pipeline on a tiny random-weight model.

The model is built in code from a fixed seed, saved once as an ordinary diffusers folder under
the home, and then loaded by the same code path as real weights. It renders meaningless
pictures in well under a second on any CPU, which is what tests and offline demos need.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from reverie.render.diffusers_engine import DiffusersEngine

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


def _build_tokenizer(max_length: int = 512):
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
    fast.chat_template = _CHAT_TEMPLATE
    fast.model_max_length = max_length
    return fast


def build_tiny_pipeline():
    """A ZImagePipeline with tiny random weights, identical on every machine (fixed seeds)."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = _build_tokenizer()
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

    tokenizer = _build_tokenizer(max_length=77)
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


def _save_once(target: Path, build) -> Path:
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

    for leftover in target.parent.glob(f"{target.name}.tmp-*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(leftover, ignore_errors=True)
        except PermissionError:  # alive, another user's
            pass


def ensure_tiny_controlnet(models_dir: Path) -> Path:
    return _save_once(Path(models_dir) / TINY_CONTROLNET_DIR_NAME, build_tiny_controlnet)


def ensure_tiny_sd15(models_dir: Path) -> Path:
    return _save_once(Path(models_dir) / TINY_SD15_DIR_NAME, build_tiny_sd15_pipeline)


def ensure_tiny_weights(models_dir: Path) -> Path:
    """Save the tiny pipeline as a diffusers folder once; later loads read it like real weights."""
    return _save_once(Path(models_dir) / TINY_DIR_NAME, build_tiny_pipeline)


class TinyEngine(DiffusersEngine):
    name = "tiny"
    # Its pictures carry no meaning at any size; small keeps the embedded default fast on a CPU.
    max_side = 256

    @property
    def identity(self) -> str:
        # Built from fixed seeds, the same on every machine; where it is saved does not matter.
        return f"tiny-v{TINY_VERSION}"

    def __init__(self, models_dir: str | os.PathLike | None = None, **options):
        if models_dir is None:
            from reverie.config import default_home

            models_dir = default_home() / "models"
        options.setdefault("device", "cpu")
        options.setdefault("dtype", "float32")
        # Built lazily: most runs never use a control image.
        self._models_dir = Path(models_dir)
        super().__init__(model_path=str(ensure_tiny_weights(Path(models_dir))), profile="z-image-turbo", **options)

    def _model_label(self, where: str) -> str:
        # Never the profile's name: PNG Info and civitai would credit Z-Image-Turbo for noise.
        return f"tiny-z-image-v{TINY_VERSION} (random weights)"

    def _variant(self, control):
        if control is not None and control.kind != "img2img" and self.controlnet_path is None:
            self.controlnet_path = str(ensure_tiny_controlnet(self._models_dir))
        return super()._variant(control)
