"""Whether CLIP weights are cached on this machine, answered without importing torch or open_clip.

`--scorer auto` asks on every run; importing open_clip only to read where its default weights
live cost more than a second of each command's start. The places of the default model are known
(test_clip_cache checks them against open_clip's own table); any other model asks open_clip.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

DEFAULT_MODEL = "ViT-L-14-quickgelu"
DEFAULT_PRETRAINED = "openai"
HF_WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
OPENAI_L14 = ("timm/vit_large_patch14_clip_224.openai/",
              "https://openaipublic.azureedge.net/clip/models/"
              "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt")
# (model, pretrained) -> open_clip's (hf_hub, url) for it.
KNOWN = {("ViT-L-14-quickgelu", "openai"): OPENAI_L14, ("ViT-L-14", "openai"): OPENAI_L14}


def known_places(model_name: str, pretrained: str) -> Optional[tuple[str, str]]:
    return KNOWN.get((model_name, pretrained))


def cached_clip_weights(model_name: str = DEFAULT_MODEL, pretrained: str = DEFAULT_PRETRAINED) -> Optional[str]:
    """The local file holding `pretrained` weights for `model_name`, looking only at caches."""
    places = known_places(model_name, pretrained)
    if places is None:
        import open_clip

        cfg = open_clip.get_pretrained_cfg(model_name, pretrained) or {}
        places = (cfg.get("hf_hub", ""), cfg.get("url", ""))
    hf_hub, url = places
    # open_clip's convention: "org/repo/file" names one file, "org/repo/" the default names.
    repo, filename = os.path.split(hf_hub)
    if repo:
        from huggingface_hub import try_to_load_from_cache

        for name in ([filename] if filename else HF_WEIGHT_NAMES):
            found = try_to_load_from_cache(repo, name)
            if isinstance(found, str):
                return found
    if url:
        # open_clip's own download cache for the OpenAI URLs.
        candidate = Path("~/.cache/clip").expanduser() / os.path.basename(url)
        if candidate.is_file():
            return str(candidate)
    return None
