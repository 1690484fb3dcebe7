"""Budget-aware stopping: a pure rule on the run's own scores, then through the real loop."""

from __future__ import annotations

import numpy as np
import pytest

from reverie.orchestrator.policy import Budget, EarlyStop, chance_of_better, stop_reason


def test_the_chance_of_better_falls_as_the_best_pulls_away():
    rng = np.random.default_rng(0)
    scores = list(rng.normal(0.5, 0.05, size=24))
    typical = chance_of_better(scores, next_renders=8, margin=0.0)
    assert 0.0 < typical < 1.0
    # A best far above the rest: the same distribution will hardly beat it.
    assert chance_of_better(scores + [0.9], next_renders=8, margin=0.0) < 0.01 < typical
    # More renders, a better chance; a larger margin, a smaller one.
    assert chance_of_better(scores, next_renders=32, margin=0.0) > typical
    assert chance_of_better(scores, next_renders=8, margin=0.05) < typical
    assert chance_of_better([0.4] * 10, next_renders=8, margin=0.0) == 0.0  # nothing varies
    assert chance_of_better(scores, next_renders=0, margin=0.0) == 0.0


def test_the_estimate_matches_simulation_for_normal_scores():
    # Against the frequency it estimates: draw 16 scores, ask about the next 8, many times.
    rng = np.random.default_rng(1)
    hits, estimates = 0, []
    for _ in range(3000):
        draws = rng.normal(0.5, 0.1, size=24)
        seen, nxt = draws[:16], draws[16:]
        estimates.append(chance_of_better(list(seen), next_renders=8, margin=0.02))
        hits += nxt.max() > seen.max() + 0.02
    assert np.mean(estimates) == pytest.approx(hits / 3000, abs=0.05)


def test_stop_reason_names_the_rule_and_waits_for_enough_scores():
    rule = EarlyStop(threshold=0.05, margin=0.02, min_scores=8)
    b = Budget(rounds=10, early_stop=rule)
    flat_with_outlier = [0.5, 0.51, 0.49, 0.5, 0.52, 0.48, 0.5, 0.5, 0.9]
    reason = stop_reason(b, finished_round=1, history=[0.52, 0.9], elapsed=0, renders=9, scores=flat_with_outlier,
                         next_renders=4)
    assert reason.startswith("unlikely to improve:") and "9 scores" in reason and "by 0.02" in reason
    # Too few scores to judge, no next round, or the rule off: it goes on.
    assert stop_reason(b, finished_round=0, history=[0.9], elapsed=0, renders=3, scores=[0.5, 0.5, 0.9],
                       next_renders=4) == ""
    assert stop_reason(b, finished_round=1, history=[0.9], elapsed=0, renders=9, scores=flat_with_outlier,
                       next_renders=0) == ""
    off = Budget(rounds=10, early_stop=None)
    assert stop_reason(off, finished_round=1, history=[0.9], elapsed=0, renders=9, scores=flat_with_outlier,
                       next_renders=4) == ""
    # A wide spread keeps it going; the target and the budgets still come first.
    wide = list(np.linspace(0.1, 0.9, 12))
    assert stop_reason(b, finished_round=1, history=[0.9], elapsed=0, renders=12, scores=wide, next_renders=8) == ""
    capped = Budget(rounds=10, target=0.8, early_stop=rule)
    assert stop_reason(capped, finished_round=1, history=[0.9], elapsed=0, renders=9, scores=flat_with_outlier,
                       next_renders=4).startswith("target 0.8")


def test_a_run_stops_early_with_the_rule_in_its_reason(home):
    from reverie.orchestrator.studio import Studio
    from reverie.render.fixed import FixedLatencyEngine

    class OneStandsOut(FixedLatencyEngine):
        """Seed 0's image is clean; every other is static: nothing later will beat the first."""

        @staticmethod
        def image_for(spec):
            from reverie.scoring.synthetic import clean, static

            rng = np.random.default_rng(spec.seed)
            return (clean if spec.seed == 7 else static)(rng, side=64).resize((spec.width, spec.height))

    with Studio(home=home, engine=OneStandsOut(latency=0.0), scorer="heuristic") as studio:
        result = studio.make("a fox", seed=7, n=8, rounds=5, megapixels=0.01)
    assert result.stop_reason.startswith("unlikely to improve"), result.stop_reason
    # Two rounds of five (one is too few to be sure: the clean image widens the spread it is
    # judged against); the rest of the budget is not spent, and the count says so exactly.
    assert len(result.renders) == 16
    from reverie.store.db import Store

    assert Store(home).get_run(result.run_id)["stop_reason"] == result.stop_reason


def test_the_rule_is_for_revise_runs_not_explore():
    from reverie.orchestrator.policy import early_stop_for

    assert early_stop_for("revise") == EarlyStop() and early_stop_for("explore") is None
