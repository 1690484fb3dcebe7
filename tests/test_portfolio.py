"""The Vendi score and the MMR choice, as pure functions."""

from __future__ import annotations

import numpy as np
import pytest

from reverie.orchestrator.noise_search import NoiseDist, draw, refit
from reverie.scoring.portfolio import mmr, vendi


def test_vendi_counts_effectively_different_items():
    assert vendi([[1, 0, 0]] * 5) == pytest.approx(1.0)
    assert vendi(np.eye(4).tolist()) == pytest.approx(4.0)
    two_groups = [[1, 0], [1, 0], [0, 1], [0, 1]]
    assert vendi(two_groups) == pytest.approx(2.0)
    assert vendi([]) == 0.0


def test_mmr_at_zero_is_top_k_and_above_zero_trades_a_near_twin_for_a_different_answer():
    scores = [0.90, 0.89, 0.80, 0.50]
    emb = [[1, 0], [1, 0.01], [0, 1], [0.7, 0.7]]
    assert mmr(scores, emb, 2, diversity=0.0) == [0, 1]
    assert mmr(scores, emb, 2, diversity=0.3) == [0, 2]  # the twin of the best gives way
    assert sorted(mmr(scores, emb, 9, diversity=0.3)) == [0, 1, 2, 3]  # never more than there are
    with pytest.raises(ValueError):
        mmr(scores, emb, 2, diversity=-1)


def test_noise_search_draws_reproducibly_and_moves_towards_the_elite():
    prior = NoiseDist.prior(3)
    assert draw(prior, [1, 2]) == draw(prior, [1, 2]) != draw(prior, [3, 4])
    comps = [[1.0, 1.0, 1.0], [1.2, 0.8, 1.0], [-2.0, -2.0, -2.0], [-1.0, 0.0, 2.0]]
    nxt = refit(prior, comps, [0.9, 0.8, 0.1, 0.2])
    assert all(m > 0.5 for m in nxt.mean) and all(s >= 0.35 for s in nxt.std)
