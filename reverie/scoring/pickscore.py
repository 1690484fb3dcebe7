"""PickScore: a CLIP-H model fine-tuned on human preferences between generated images.

Optional. Used only when its weights are on disk (a local folder, or the Hugging Face cache);
it is a separate, larger image tower, so it costs a second image forward pass.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

from reverie.types import ReverieError

PICKSCORE_REPO = "yuvalkirstain/PickScore_v1"
# PickScore was trained with this model's processor; its own repo may not carry one.
PROCESSOR_REPO = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


def cached_snapshot(repo_id: str) -> Optional[str]:
    """The cached snapshot folder of a Hugging Face repo, looking only at the cache."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except Exception:  # not cached (or a partial cache): the scorer simply skips PickScore
        return None


def resolve_pickscore(path: Optional[str] = None) -> Optional[str]:
    """An explicit folder (must exist), else the cached PickScore_v1 snapshot, else None."""
    if path:
        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise ReverieError(f"PickScore folder {folder} has no config.json: point [scoring] pickscore at a "
                               f"transformers CLIPModel folder, or remove the setting")
        return str(folder)
    return cached_snapshot(PICKSCORE_REPO)


class PickScorer:
    def __init__(self, path: str, device: str = "cpu", processor_path: Optional[str] = None):
        from transformers import AutoProcessor, CLIPModel

        self.device = device
        import torch

        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self.model = CLIPModel.from_pretrained(path, local_files_only=True, torch_dtype=dtype).to(device).eval()
        for candidate in (processor_path, path, cached_snapshot(PROCESSOR_REPO)):
            if candidate and os.path.isdir(candidate):
                try:
                    self.processor = AutoProcessor.from_pretrained(candidate, local_files_only=True)
                    break
                except (OSError, ValueError):
                    continue
        else:
            raise ReverieError(f"PickScore at {path} has no image/text processor on disk: "
                               f"run `reverie models pull pickscore` or remove the pickscore setting")

    def score(self, images: Sequence, prompts: Sequence[str]) -> list[float]:
        """logit_scale * cosine(image, prompt), about 17..25 for generated images."""
        import torch

        with torch.no_grad():
            return self._score(torch, images, prompts)

    def _score(self, torch, images: Sequence, prompts: Sequence[str]) -> list[float]:
        pixels = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        text = self.processor(text=list(prompts), padding=True, truncation=True, max_length=77, return_tensors="pt")
        dtype = next(self.model.parameters()).dtype
        image_emb = self.model.get_image_features(pixel_values=pixels.to(self.device, dtype))
        text_emb = self.model.get_text_features(input_ids=text["input_ids"].to(self.device),
                                                attention_mask=text["attention_mask"].to(self.device))
        image_emb = torch.nn.functional.normalize(_tensor(image_emb).float(), dim=-1)
        text_emb = torch.nn.functional.normalize(_tensor(text_emb).float(), dim=-1)
        scale = self.model.logit_scale.exp().float()
        return (scale * (image_emb * text_emb).sum(-1)).tolist()

    def close(self) -> None:
        self.model = None


def _tensor(features):
    # Newer transformers may return a model output object instead of a tensor.
    return features.pooler_output if hasattr(features, "pooler_output") else features
