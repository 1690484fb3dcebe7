"""CLIP through open_clip: image and text embeddings, loaded once from weights on disk.

The default is ViT-L/14 with OpenAI's weights, the backbone the LAION aesthetic predictor was
trained on. OpenAI trained it with QuickGELU, so the model is built as `ViT-L-14-quickgelu`; the
plain `ViT-L-14` config uses GELU and gives subtly wrong embeddings with those weights.
Nothing here downloads: weights come from a local file or the Hugging Face / open_clip cache.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import torch

from reverie.scoring.clip_cache import DEFAULT_MODEL, DEFAULT_PRETRAINED, cached_clip_weights
from reverie.types import ReverieError


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def register_config(path: str | os.PathLike) -> str:
    """Register an open_clip model config JSON (name = file stem) and return the name."""
    import open_clip

    path = Path(path).expanduser()
    if not path.is_file():
        raise ReverieError(f"CLIP model config {path} does not exist: point [scoring] clip_config at an open_clip JSON config")
    open_clip.add_model_config(path)
    return path.stem


def resolve_clip_weights(model_name: str = DEFAULT_MODEL, weights: Optional[str] = None) -> str:
    """An explicit weights file, else the cached OpenAI weights; a clear error when neither."""
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ReverieError(f"CLIP weights {path} do not exist: fix [scoring] clip_weights or REVERIE_CLIP_WEIGHTS")
        return str(path)
    found = cached_clip_weights(model_name, DEFAULT_PRETRAINED)
    if found is None:
        raise ReverieError(f"no CLIP weights for {model_name} on this machine: run `reverie models pull clip-vit-l-14` "
                           f"or set [scoring] clip_weights to a local file")
    return found


class ClipModel:
    """An open_clip model kept warm on one device; embeddings come back L2-normalised."""

    def __init__(self, model_name: str = DEFAULT_MODEL, weights: Optional[str] = None,
                 device: Optional[str] = None, precision: Optional[str] = None):
        import open_clip

        self.device = device or default_device()
        # Half precision only where it is fast; CPU stays in fp32.
        self.precision = precision or ("fp16" if self.device.startswith("cuda") else "fp32")
        self.model_name = model_name
        self.weights = weights
        if model_name not in open_clip.list_models():
            raise ReverieError(f"unknown CLIP model {model_name!r}: use one of open_clip's names such as {DEFAULT_MODEL}")
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=weights, device=self.device, precision=self.precision)
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.embed_dim = int(self.model.text_projection.shape[1]) if getattr(self.model, "text_projection", None) is not None \
            else int(self.model.visual.output_dim)

    @torch.no_grad()
    def encode_images(self, images: Sequence) -> torch.Tensor:
        """(N, D) float32 normalised image embeddings, in one forward pass of the image tower."""
        pixels = torch.stack([self.preprocess(im.convert("RGB")) for im in images]).to(self.device)
        dtype = next(self.model.visual.parameters()).dtype
        features = self.model.encode_image(pixels.to(dtype)).float()
        return torch.nn.functional.normalize(features, dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device)
        features = self.model.encode_text(tokens).float()
        return torch.nn.functional.normalize(features, dim=-1)

    def close(self) -> None:
        self.model = None
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
