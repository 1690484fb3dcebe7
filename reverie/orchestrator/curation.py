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
