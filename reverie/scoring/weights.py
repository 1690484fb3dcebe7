"""The scoring models reverie knows: where each is, whether it is here, and how to pull it.

`pull` is the only code in scoring that downloads; it runs when a user asks
(`reverie models pull NAME`), into the Hugging Face cache that the scorers read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

from reverie.types import DownloadFinished, DownloadStarted, ProgressFn, ReverieError, no_progress


@dataclass(frozen=True)
class ScorerModel:
    name: str
    description: str
    present: bool
    where: str
    pull: Callable[..., str]  # pull(progress) -> the local path


def _download(name: str, repo: str, progress: ProgressFn, **kwargs) -> str:
    from huggingface_hub import hf_hub_download, snapshot_download

    progress(DownloadStarted(model=name, repo=repo))
    try:
        path = hf_hub_download(repo, **kwargs) if "filename" in kwargs else snapshot_download(repo, **kwargs)
    except Exception as e:
        raise ReverieError(f"could not download {name} from huggingface.co/{repo} ({type(e).__name__}): "
                           f"check the network (or HF_ENDPOINT / HF_TOKEN) and run `reverie models pull {name}` again") from None
    progress(DownloadFinished(model=name, path=str(path)))
    return path


def pull_clip(progress: ProgressFn = no_progress) -> str:
    import open_clip

    from reverie.scoring.clip import DEFAULT_MODEL, DEFAULT_PRETRAINED

    repo, filename = os.path.split(open_clip.get_pretrained_cfg(DEFAULT_MODEL, DEFAULT_PRETRAINED)["hf_hub"])
    return _download("clip-vit-l-14", repo, progress, filename=filename or "open_clip_model.safetensors")


def pull_aesthetic(progress: ProgressFn = no_progress) -> str:
    from reverie.scoring.aesthetic import AESTHETIC_FILE, AESTHETIC_REPO

    return _download("laion-aesthetic-v2", AESTHETIC_REPO, progress, filename=AESTHETIC_FILE)


def pull_pickscore(progress: ProgressFn = no_progress) -> str:
    from reverie.scoring.pickscore import PICKSCORE_REPO, PROCESSOR_REPO

    # Only the processor's small files from the CLIP-H repo, not its 4 GB of weights.
    _download("pickscore", PROCESSOR_REPO, progress, allow_patterns=["*.json", "*.txt"])
    return _download("pickscore", PICKSCORE_REPO, progress)


def pull_hps(progress: ProgressFn = no_progress) -> str:
    from reverie.scoring.hps import HPS_FILE, HPS_REPO

    return _download("hps", HPS_REPO, progress, filename=HPS_FILE)


def scorer_models(table: Optional[dict] = None) -> list[ScorerModel]:
    """The CLIP, aesthetic, PickScore and HPS entries; `table` is reverie.toml's [scoring] table,
    whose paths take the place of the cache."""
    from reverie.scoring.aesthetic import cached_aesthetic_weights
    from reverie.scoring.clip_cache import DEFAULT_MODEL, cached_clip_weights
    from reverie.scoring.hps import cached_hps_weights
    from reverie.scoring.pickscore import cached_snapshot, PICKSCORE_REPO

    table = table or {}

    def place(configured: str, cached: Optional[str]) -> tuple[bool, str]:
        if configured:
            return os.path.exists(os.path.expanduser(configured)), configured
        return cached is not None, cached or "not downloaded (Hugging Face cache)"

    clip = place(table.get("clip_weights", ""), cached_clip_weights(DEFAULT_MODEL))
    aesthetic = place(table.get("aesthetic_weights", ""), cached_aesthetic_weights())
    pick = place(table.get("pickscore", "") if table.get("pickscore") != "off" else "", cached_snapshot(PICKSCORE_REPO))
    hps = place(table.get("hps_weights", "") if table.get("hps_weights") != "off" else "", cached_hps_weights())
    return [
        ScorerModel("clip-vit-l-14", "CLIP ViT-L/14 (OpenAI weights, QuickGELU): faithfulness to the idea and prompt",
                    *clip, pull_clip),
        ScorerModel("laion-aesthetic-v2", "LAION aesthetic predictor v2 (MLP on ViT-L/14 embeddings, 1-10)",
                    *aesthetic, pull_aesthetic),
        ScorerModel("pickscore", "PickScore v1 (CLIP-H human-preference scorer), optional; the held-out judge by default",
                    *pick, pull_pickscore),
        ScorerModel("hps", "HPS v2.1 (open_clip ViT-H-14 human-preference scorer), optional",
                    *hps, pull_hps),
    ]
