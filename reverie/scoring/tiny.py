"""A tiny, randomly initialised CLIP and aesthetic MLP written to real files, for tests and the
benchmark. They exercise every line of the real loading and scoring code in seconds on a CPU;
their scores mean nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

TINY_CLIP_NAME = "reverie-tiny-clip"
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def write_tiny_scoring_weights(folder: str | os.PathLike, seed: int = 0) -> dict[str, str]:
    """Write the tiny CLIP's config JSON and weights and a tiny aesthetic MLP `.pth` into folder;
    return the [scoring] settings that point at them."""
    import open_clip
    import torch

    from reverie.scoring.aesthetic import AestheticMLP

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / f"{TINY_CLIP_NAME}.json"
    clip_weights = folder / "tiny_clip.pt"
    aesthetic_weights = folder / "tiny_aesthetic.pth"
    if not (config.is_file() and clip_weights.is_file() and aesthetic_weights.is_file()):
        config.write_text(json.dumps(TINY_CLIP_CONFIG, indent=2), encoding="utf-8")
        open_clip.add_model_config(config)
        torch.manual_seed(seed)
        model = open_clip.create_model(TINY_CLIP_NAME, pretrained=None)
        torch.save(model.state_dict(), clip_weights)
        torch.save(AestheticMLP(TINY_CLIP_CONFIG["embed_dim"]).state_dict(), aesthetic_weights)
    return {"clip_config": str(config), "clip_weights": str(clip_weights), "aesthetic_weights": str(aesthetic_weights)}


def write_tiny_pickscore(folder: str | os.PathLike, seed: int = 0) -> str:
    """A tiny random transformers CLIPModel with its processor (a character-level CLIP tokenizer)
    saved as a PickScore-style folder; returns the folder."""
    import string

    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder = Path(folder)
    if (folder / "config.json").is_file():
        return str(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + string.digits + ",.":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    return str(folder)


def write_tiny_hps(folder: str | os.PathLike, seed: int = 1) -> dict[str, str]:
    """A tiny random open_clip model saved as an HPS-style checkpoint ({"state_dict": ...}) with its
    config; returns the [scoring] settings that point at them."""
    import open_clip
    import torch

    config = write_tiny_scoring_weights(folder)["clip_config"]
    open_clip.add_model_config(config)
    path = Path(folder) / "tiny_hps.pt"
    if not path.is_file():
        torch.manual_seed(seed)
        model = open_clip.create_model(Path(config).stem, pretrained=None)
        torch.save({"state_dict": model.state_dict()}, path)
    return {"hps_weights": str(path), "hps_config": config}
