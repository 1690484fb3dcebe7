"""A portfolio, not a podium: how varied a kept set is (the Vendi score), and choosing the kept K
by maximal marginal relevance so that K keepers are K different good answers.

Both work on any embeddings: CLIP image embeddings when the scorer has them, or the heuristic
scorer's pixel signatures (a colour-layout stand-in that sees composition and palette, not
content; callers say which they used).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from reverie.scoring.dedupe import cosine_matrix

# The weight on similarity in the MMR choice, in composite units per unit of cosine. 0 is plain
# top-K. bench/bench_curation.py measures true mode coverage and kept quality over weights; 0.3
# covered the most modes there for a kept-quality loss well under 2% (see docs/portfolio.md).
DEFAULT_DIVERSITY = 0.3


def vendi(embeddings: Sequence[Sequence[float]]) -> float:
    """The Vendi score (Friedman & Dieng 2023): exp of the entropy of the eigenvalues of the
    cosine-similarity kernel over n. 1 for n identical items, n for n orthogonal ones: the
    effective number of different images."""
    n = len(embeddings)
    if n == 0:
        return 0.0
    k = np.clip(cosine_matrix(embeddings), -1.0, 1.0)
    # Cosine kernels of real vectors are positive semi-definite; clip round-off below zero.
    eig = np.clip(np.linalg.eigvalsh(k / n), 0.0, None)
    eig = eig[eig > 1e-12]
    eig = eig / eig.sum()
    return float(np.exp(-(eig * np.log(eig)).sum()))


def mmr(scores: Sequence[float], embeddings: Sequence[Sequence[float]], k: int,
        diversity: float = DEFAULT_DIVERSITY) -> list[int]:
    """Indices of k items chosen greedily by composite minus `diversity` times the largest cosine
    to an item already chosen (maximal marginal relevance). With diversity 0 it is the top k by
    score; ties go to the earlier item. Returned in the order chosen (best first)."""
    n = len(scores)
    if n == 0 or k <= 0:
        return []
    if diversity < 0:
        raise ValueError("diversity is 0 (top-K) or more")
    s = np.asarray(scores, dtype=np.float64)
    sims = cosine_matrix(embeddings) if diversity > 0 else np.zeros((n, n))
    chosen: list[int] = []
    closest = np.full(n, -np.inf)  # the largest cosine of each item to the chosen ones
    free = np.ones(n, dtype=bool)
    for _ in range(min(k, n)):
        penalty = np.where(np.isfinite(closest), closest, 0.0) if chosen else np.zeros(n)
        gain = np.where(free, s - diversity * penalty, -np.inf)
        i = int(np.argmax(gain))  # argmax takes the first of equal gains
        chosen.append(i)
        free[i] = False
        closest = np.maximum(closest, sims[i])
    return chosen
