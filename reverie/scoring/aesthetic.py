"""LAION aesthetic predictor v2: a small MLP on L2-normalised CLIP ViT-L/14 image embeddings.

The layer layout follows the published checkpoint (sac+logos+ava1-l14-linearMSE.pth), so its
state dict loads as is: `layers.{0,2,4,6,7}` are the linear layers, the others are dropouts, and
there are no activations between them. Its output is on the AVA rating scale, about 1 to 10.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from reverie.types import ReverieError

AESTHETIC_DIM = 768  # ViT-L/14's embedding width, the only backbone the published weights fit


class AestheticMLP(nn.Module):
    def __init__(self, input_size: int = AESTHETIC_DIM):
        super().__init__()
        self.input_size = input_size
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, normalised_embeddings: torch.Tensor) -> torch.Tensor:
        """(N, D) L2-normalised image embeddings -> (N,) scores on the 1..10 scale."""
        return self.layers(normalised_embeddings).squeeze(-1)


def load_aesthetic(path: str | os.PathLike, device: str | torch.device = "cpu") -> AestheticMLP:
    """Load a `.pth` state dict from a local file; the input width is read from its first layer."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ReverieError(f"aesthetic weights {path} do not exist: run `reverie models pull laion-aesthetic-v2` "
                           f"or set [scoring] aesthetic_weights to the .pth file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ReverieError(f"aesthetic weights {path} could not be read ({type(e).__name__}): "
                           f"download sac+logos+ava1-l14-linearMSE.pth again") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    first = state.get("layers.0.weight") if isinstance(state, dict) else None
    if first is None:
        raise ReverieError(f"{path} is not a LAION aesthetic predictor state dict (no layers.0.weight): "
                           f"use sac+logos+ava1-l14-linearMSE.pth")
    model = AestheticMLP(int(first.shape[1]))
    model.load_state_dict(state)
    return model.to(device).eval()


AESTHETIC_REPO = "camenduru/improved-aesthetic-predictor"
AESTHETIC_FILE = "sac+logos+ava1-l14-linearMSE.pth"


def cached_aesthetic_weights() -> str | None:
    """The published weights in the Hugging Face cache, looking only at the cache."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(AESTHETIC_REPO, AESTHETIC_FILE)
    return found if isinstance(found, str) else None
