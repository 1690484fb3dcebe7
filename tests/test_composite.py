"""The composite cannot be carried by one verifier, and a target means the same in every run."""

from __future__ import annotations

import numpy as np
import pytest

from reverie.scoring.composite import MAX_SHARE, REFERENCES, capped_shares, composite, normalise


def test_no_component_takes_more_than_its_capped_share():
    shares = capped_shares({"faithfulness": 10.0, "prompt_match": 1.0, "aesthetic": 1.0, "pickscore": 1.0})
    assert sum(shares.values()) == pytest.approx(1.0)
    assert max(shares.values()) == pytest.approx(MAX_SHARE)
    # The others keep their proportions.
    assert shares["prompt_match"] == pytest.approx(shares["aesthetic"]) == pytest.approx(0.2)
    # Two weighted components can at most be even; one alone is all of it.
    assert capped_shares({"a": 9.0, "b": 1.0}) == {"a": 0.5, "b": 0.5}
    assert capped_shares({"a": 2.0, "b": 0.0}) == {"a": 1.0}


def test_maxing_one_verifier_cannot_beat_an_image_all_verifiers_like():
    weights = {"faithfulness": 5.0, "prompt_match": 1.0, "aesthetic": 1.0, "pickscore": 1.0}
    top = {name: ref[-1] for name, ref in REFERENCES.items()}
    typical = {name: ref[4] for name, ref in REFERENCES.items()}  # 75th percentile on every verifier
    gamed = {**{name: ref[1] for name, ref in REFERENCES.items()}, "faithfulness": top["faithfulness"]}
    assert composite(gamed, weights)[0] < composite(typical, weights)[0]


def test_a_target_means_the_same_in_every_run():
    # The scale is fixed: the same raw scores give the same composite whatever else the run holds.
    rng = np.random.default_rng(0)
    values = {"faithfulness": 0.27, "aesthetic": 6.0}
    alone = composite(values, {"faithfulness": 1, "aesthetic": 1})[0]
    for _ in range(3):
        others = [{"faithfulness": float(rng.uniform(0.1, 0.4)), "aesthetic": float(rng.uniform(3, 8))} for _ in range(5)]
        assert [composite(v, {"faithfulness": 1, "aesthetic": 1})[0] for v in [values, *others]][0] == alone
    assert 0.5 < alone < 0.75


def test_percentiles_are_monotone():
    for name, ref in REFERENCES.items():
        xs = np.linspace(ref[0] - 1, ref[-1] + 1, 50)
        ys = [normalise(name, x) for x in xs]
        assert ys == sorted(ys) and ys[0] == 0.0 and ys[-1] == 1.0
