"""The cheap-preview stage of noise search: each seed's noise candidates are judged on a few-step
preview and only the best is rendered in full; previews are not renders (no PNG, no row) but
count in the render budget by their step share, and the full renders reproduce from their PNG."""

from __future__ import annotations

import pytest

from reverie.orchestrator import noise_search
from reverie.orchestrator.requests import validate_request
from reverie.types import Request, ReverieError
from tests.conftest import run_cli

CHANNELS = 16


def test_candidates_start_with_the_plain_draw_and_cost_their_step_share():
    prior = noise_search.NoiseDist.prior(noise_search.dims(CHANNELS))
    four = noise_search.candidates(prior, 5, 4)
    assert four[0] == noise_search.draw(prior, [5])[0] and len(set(four)) == 4
    assert four == noise_search.candidates(prior, 5, 4)  # from the seed alone
    assert noise_search.pick([0.1, 0.7, 0.7, 0.2]) == 1
    assert noise_search.preview_cost(16, 2, 8) == 4.0
    with pytest.raises(ReverieError, match="add --search noise"):
        validate_request(Request(idea="a fox", preview_steps=2))
    with pytest.raises(ReverieError, match="fewer than the full render's 9 steps"):
        validate_request(Request(idea="a fox", search="noise", preview_steps=9))


def test_a_previewed_round_keeps_each_seeds_best_candidate_and_pays_for_its_previews(home, tmp_path):
    from reverie.orchestrator.studio import Studio
    from reverie.render.tiny import TinyEngine
    from reverie.scoring.heuristic import HeuristicScorer
    from reverie.store.db import Store

    events = []
    with Studio(home=home, engine="tiny", scorer="heuristic") as studio:
        made = studio.make("a fox in the rain", seed=3, n=2, rounds=3, megapixels=0.01, search="noise",
                           preview_steps=2, max_renders=4, progress=events.append)
    # 2 seeds x 4 candidates x 2/9 steps = 1.78 renders of previews, counted as 2: with the 2 full
    # renders the budget of 4 is spent after one round.
    previewed = [e.data for e in events if e.kind == "previewed"]
    assert len(previewed) == 1 and previewed[0]["previews"] == 8 and previewed[0]["cost_in_renders"] == pytest.approx(16 / 9, abs=1e-3)
    assert len(made.renders) == 2 and "render budget reached (4)" in made.stop_reason
    # The previews left no render, no file: what is stored is the two full renders.
    assert len(list(home.rglob("*.png"))) == 2
    store = Store(home)
    try:
        assert len(store.renders(made.run_id)) == 2
    finally:
        store.close()
    # Each kept spec is its seed's candidate whose 2-step preview the scorer liked best.
    prior = noise_search.NoiseDist.prior(noise_search.dims(CHANNELS))
    engine, scorer = TinyEngine(models_dir=home / "models"), HeuristicScorer()
    try:
        for render in made.renders:
            options = noise_search.candidates(prior, render.seed, noise_search.PREVIEW_CANDIDATES)
            specs = [render.spec.with_(noise_lowfreq=c, steps=2) for c in options]
            images = [o.image for o in engine.render(specs)]
            scores = [s.composite for s in scorer.score(images, [""] * 4, [render.prompt] * 4)]
            assert render.spec.noise_lowfreq == options[noise_search.pick(scores)]
            assert render.spec.steps == 9
    finally:
        engine.close()
    alone = tmp_path / "alone.png"
    alone.write_bytes(open(made.renders[0].path, "rb").read())
    r = run_cli("reproduce", str(alone), "--engine", "tiny", home=home)
    assert r.returncode == 0 and "match: pixels identical" in r.stdout, r.stdout + r.stderr
