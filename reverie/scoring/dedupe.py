"""Near-duplicate detection by embedding cosine, so a kept set is diverse."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def cosine_matrix(embeddings: Sequence[Sequence[float]]) -> np.ndarray:
    m = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    m = m / norms
    return m @ m.T


def diverse_top(ranked_embeddings: Sequence[Sequence[float]], k: int, threshold: float = 0.95) -> list[int]:
    """Indices of up to k items, in rank order, skipping any whose cosine to a kept one is above
    the threshold. Items must already be sorted best first."""
    if not ranked_embeddings:
        return []
    sims = cosine_matrix(ranked_embeddings)
    kept: list[int] = []
    for i in range(len(ranked_embeddings)):
        if all(sims[i, j] <= threshold for j in kept):
            kept.append(i)
        if len(kept) == k:
            break
    return kept


def mean_similarity(embeddings: Sequence[Sequence[float]]) -> float:
    """Mean pairwise cosine; near 1 means the candidates are too alike."""
    n = len(embeddings)
    if n < 2:
        return 0.0
    sims = cosine_matrix(embeddings)
    return float((sims.sum() - np.trace(sims)) / (n * (n - 1)))


def near_duplicates(ranked_embeddings: Sequence[Sequence[float]], threshold: float = 0.95) -> dict[int, int]:
    """{index: index of the better-ranked kept item it nearly duplicates}, for items that
    diverse_top would drop. Items must already be sorted best first."""
    if not ranked_embeddings:
        return {}
    sims = cosine_matrix(ranked_embeddings)
    kept: list[int] = []
    dupes: dict[int, int] = {}
    for i in range(len(ranked_embeddings)):
        closest = max(kept, key=lambda j: sims[i, j], default=None)
        if closest is not None and sims[i, closest] > threshold:
            dupes[i] = closest
        else:
            kept.append(i)
    return dupes
