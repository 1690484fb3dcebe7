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
