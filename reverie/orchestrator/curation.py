"""Choosing which renders of a run to show or keep: the best by composite, near-duplicates out."""

from __future__ import annotations

from typing import Optional

from reverie.scoring.dedupe import diverse_top
from reverie.types import Render


def keep_diverse(store, run_id: str, k: int, embeddings: Optional[dict[int, tuple]] = None, threshold: float = 0.95,
                 fill: bool = True) -> tuple[list[Render], set[int]]:
    """The top k scored renders of a run, best first, near-duplicates pushed out.

    Uses the scorer's embeddings when every candidate has one from this session (CLIP), or else a
    pixel signature of each PNG for all of them, so the two kinds are never compared. With `fill`,
    when fewer than k distinct images exist the best near-duplicates fill the set and are returned
    as the second value; without it the set is simply shorter.
    """
    embeddings = embeddings or {}
    ranked = sorted((r for r in store.renders(run_id) if r.scores is not None), key=lambda r: (-r.scores.composite, r.id))
    if not ranked:
        return [], set()
    if all(r.id in embeddings for r in ranked):
        vectors = [embeddings[r.id] for r in ranked]
    else:
        vectors = [pixel_signature(r.path) for r in ranked]
    picked = diverse_top(vectors, k, threshold)
    dups: set[int] = set()
    for i, r in enumerate(ranked):
        if not fill or len(picked) >= k:
            break
        if i not in picked:
            picked.append(i)
            dups.add(r.id)
    picked.sort()
    return [ranked[i] for i in picked], dups


def pixel_signature(path: str) -> tuple:
    from PIL import Image

    with Image.open(path) as im:
        return image_signature(im)


def image_signature(image) -> tuple:
    """The pixel signature of an image in memory: the same as pixel_signature of its PNG."""
    import numpy as np

    from reverie.scoring.heuristic import signature

    return signature(np.asarray(image.convert("RGB"), dtype=np.float32))


DIVERSITY_SAMPLE = 64  # renders whose PNGs are read to measure a run's diversity: bounded for long runs


def run_diversity(store, run_id: str) -> tuple[Optional[float], int]:
    """(the run's diversity, how many images measured): one minus the mean pairwise cosine of the
    pixel signatures of its images (0: all alike), or None with fewer than two images. Long runs
    are measured on DIVERSITY_SAMPLE images spread evenly over them."""
    from pathlib import Path

    from reverie.orchestrator.policy import diversity
    from reverie.scoring.dedupe import mean_similarity

    renders = [r for r in store.renders(run_id) if r.path and Path(r.path).is_file()]
    if len(renders) > DIVERSITY_SAMPLE:
        step = len(renders) / DIVERSITY_SAMPLE
        renders = [renders[int(i * step)] for i in range(DIVERSITY_SAMPLE)]
    if len(renders) < 2:
        return None, len(renders)
    return diversity(mean_similarity([pixel_signature(r.path) for r in renders])), len(renders)


def diversity_line(store, run_id: str) -> str:
    value, n = run_diversity(store, run_id)
    if value is None:
        return "diversity: fewer than two images"
    return (f"diversity {value:.2f} (1 - mean pixel-signature cosine over {n} images; near 0 means alike: "
            f"the loop then turns shift, blind steps and embedding noise)")
