"""The heuristic must rank a labelled set of synthetic images: clean and sharp above every defect."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from reverie.scoring import synthetic
from reverie.scoring.heuristic import HeuristicScorer

INSTANCES = 5


def _scores(kind: str, side: int) -> list[float]:
    make = synthetic.KINDS[kind]
    images = [make(np.random.default_rng([seed, side, 14]), side) for seed in range(INSTANCES)]
    return [s.composite for s in HeuristicScorer().score(images, [""] * len(images), [""] * len(images))]


@pytest.mark.parametrize("side", [96, 200, 640])
@pytest.mark.parametrize("defect", sorted(synthetic.DEFECTS))
def test_every_clean_image_outranks_every_defective_one(defect, side):
    clean, bad = _scores("clean", side), _scores(defect, side)
    # Pairwise: each of the clean instances above each instance of the defect.
    assert min(clean) > max(bad), f"{defect} at {side}px: clean {clean} vs {bad}"


def test_the_spread_is_wide_enough_for_a_target_to_mean_something():
    clean = _scores("clean", 160)
    assert min(clean) > 0.75
    for kind in ("static", "noisy", "flat", "underexposed"):
        assert max(_scores(kind, 160)) < 0.4, kind
    assert max(_scores("blurred", 160)) < 0.6 and max(_scores("overexposed", 160)) < 0.6


def test_a_defect_lowers_the_score_of_the_same_picture():
    scorer = HeuristicScorer()
    for seed in range(INSTANCES):
        picture = synthetic.clean(np.random.default_rng(seed), 128)
        a = np.asarray(picture, dtype=np.float32)
        rng = np.random.default_rng(seed + 100)
        damaged = {
            "noise": np.clip(a + rng.normal(0, 40, a.shape), 0, 255),
            "dark": a * 0.1,
            "bright": np.clip(a * 2.5 + 90, 0, 255),
        }
        base = scorer.score([picture], [""], [""])[0].composite
        for name, pixels in damaged.items():
            worse = scorer.score([Image.fromarray(pixels.astype(np.uint8))], [""], [""])[0].composite
            assert worse < base - 0.2, (seed, name, base, worse)


def test_tiny_engine_static_renders_score_low(tiny_engine):
    from reverie.types import RenderSpec

    specs = [RenderSpec(prompt="a fox", seed=s, width=128, height=128, steps=2, guidance=1.0, profile="tiny")
             for s in range(2)]
    images = [o.image for o in tiny_engine.render(specs)]
    scores = HeuristicScorer().score(images, [""] * 2, [""] * 2)
    assert all(s.composite < 0.5 and s.scorer == "heuristic" for s in scores)


def test_runs_and_show_name_the_heuristic_beside_its_scores(tmp_path):
    import json

    from reverie.orchestrator.studio import Studio
    from tests.conftest import run_cli

    home = tmp_path / "home"
    with Studio(home=home, engine="fixed", scorer="heuristic", engine_options={"latency": 0}) as studio:
        result = studio.make("a fox in the rain", n=2, rounds=1, seed=3, megapixels=0.02)
    listed = run_cli("runs", home=home)
    assert listed.returncode == 0 and "heuristic" in listed.stdout, listed.stdout + listed.stderr
    assert json.loads(run_cli("runs", "--json", home=home).stdout)[0]["scorer"] == "heuristic"
    shown = run_cli("show", result.run_id, home=home)
    assert shown.returncode == 0 and "(heuristic)" in shown.stdout, shown.stdout + shown.stderr
