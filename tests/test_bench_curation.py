"""The curation benchmark runs end to end on a CPU in seconds (no timed assertions)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_curation.py"


def load():
    spec = importlib.util.spec_from_file_location("bench_curation", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


def test_truth_survives_the_image():
    bench = load()
    for seed, image in bench.TruthEngine().render([1, 2, 3]):
        assert abs(bench.read_quality(image) - bench.true_quality(seed)) < 1e-4


def test_the_ensemble_keeps_images_closer_to_the_oracle_than_the_gameable_verifier(capsys):
    bench = load()
    result = bench.main(["--trials", "60", "--n", "16", "--keep", "2", "--match-up-to", "24"])
    printed = capsys.readouterr().out
    assert "oracle" in printed and "renders: ensemble 16" in printed
    assert result["oracle"] >= result["reverie ensemble"] > result["best-of-N on aesthetic"] > result["random"] - 0.05
    assert result["reverie ensemble, aesthetic x7"] > result["plain mean, aesthetic x7"]
    # The early-stopping loop never spends more than the budget and, at the renders it spent,
    # keeps better images than best-of-N on the best single verifier.
    assert 4 <= result[bench.SPENT] <= 16 and "early-stopping loop spent" in printed
    assert result["reverie loop, early stop"] > result["best-of-N on faithfulness at the loop's renders"]


def test_the_portfolio_covers_more_true_modes_than_top_k_for_little_quality(capsys):
    bench = load()
    result = bench.main(["--only", "portfolio", "--trials", "120", "--n", "24", "--keep", "4"])
    assert "true modes" in capsys.readouterr().out
    top_q, top_m = result["portfolio quality: top-K by composite"], result["portfolio modes: top-K by composite"]
    from reverie.scoring.portfolio import DEFAULT_DIVERSITY

    name = f"portfolio, diversity {DEFAULT_DIVERSITY}"
    assert result[f"portfolio modes: {name}"] > top_m + 0.2
    assert result[f"portfolio quality: {name}"] >= 0.98 * top_q


def test_noise_space_search_beats_seed_rerolling_at_equal_renders():
    bench = load()
    result = bench.main(["--only", "noise", "--trials", "120", "--n", "32", "--keep", "4"])
    assert result["noise best: noise-space search"] > result["noise best: seed re-rolling"]
    assert result["noise kept: noise-space search"] > result["noise kept: seed re-rolling"]


@pytest.mark.slow
def test_the_knob_bench_measures_every_knob_on_the_tiny_engine(capsys):
    bench = load()
    result = bench.main(["--only", "knobs", "--n", "3"])
    assert "handoff 1 step to the base" in capsys.readouterr().out
    names = [*bench.KNOB_SETTINGS, "all knobs"]
    assert sorted(result) == sorted(f"knobs vendi: {name}" for name in names)
    assert all(1.0 <= v <= 3.0 + 1e-6 for v in result.values())
