"""HPS v2.1 (Human Preference Score, Wu et al. 2023): an open_clip ViT-H-14 fine-tuned on human
choices between generated images. Its score is the image-prompt cosine, about 0.25-0.33.

Weights come from a local file (`[scoring] hps_weights`) or the Hugging Face cache
(`reverie models pull hps`); nothing here downloads. `hps_config` names another open_clip config
(tests use a tiny one built in code).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from reverie.types import ReverieError

HPS_REPO = "xswu/HPSv2"
HPS_FILE = "HPS_v2.1_compressed.pt"
HPS_MODEL = "ViT-H-14"


def cached_hps_weights() -> Optional[str]:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(HPS_REPO, HPS_FILE)
    return found if isinstance(found, str) else None


def resolve_hps_weights(path: Optional[str] = None) -> Optional[str]:
    """An explicit file (must exist), else the cached HPS v2.1 checkpoint, else None."""
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ReverieError(f"HPS weights {p} do not exist: run `reverie models pull hps` or fix [scoring] hps_weights")
        return str(p)
    return cached_hps_weights()


class HpsScorer:
    name = "hps"

    def __init__(self, weights: str, model_name: str = HPS_MODEL, device: str = "cpu"):
        import open_clip

        if model_name not in open_clip.list_models():
            raise ReverieError(f"unknown open_clip model {model_name!r} for HPS: use {HPS_MODEL} or set [scoring] hps_config")
        self.device = device
        model, _, self.preprocess = open_clip.create_model_and_transforms(model_name, pretrained=None, device="cpu")
        try:
            checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ReverieError(f"HPS weights {weights} could not be read ({type(e).__name__}): "
                               f"download {HPS_FILE} again (`reverie models pull hps`)") from None
        state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
        try:
            model.load_state_dict(state)
        except Exception:
            raise ReverieError(f"{weights} is not an HPS checkpoint for {model_name}: use {HPS_FILE}") from None
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self.model = model.to(device=device, dtype=dtype).eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)

    @torch.no_grad()
    def score(self, images: Sequence, prompts: Sequence[str]) -> list[float]:
        dtype = next(self.model.parameters()).dtype
        pixels = torch.stack([self.preprocess(im.convert("RGB")) for im in images]).to(self.device, dtype)
        image = torch.nn.functional.normalize(self.model.encode_image(pixels).float(), dim=-1)
        text = torch.nn.functional.normalize(self.model.encode_text(self.tokenizer(list(prompts)).to(self.device)).float(), dim=-1)
        return (image * text).sum(-1).tolist()

    def close(self) -> None:
        self.model = None
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

