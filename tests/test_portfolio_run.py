"""`reverie make --diversity` keeps a portfolio: on the same run, its kept set is more varied (Vendi
score) than plain top-K's, and `show` prints both."""

from __future__ import annotations

import json

from reverie.orchestrator.curation import curate, portfolio_line
from reverie.scoring.portfolio import vendi
from reverie.store.db import Store
from tests.conftest import run_cli


def test_make_with_diversity_keeps_a_more_varied_set_than_top_k(home):
    made = run_cli("make", "a harbour at dawn", "--n", "12", "--rounds", "1", "--seed", "7", "--diversity", "0.3",
                   "--json", home=home)
    assert made.returncode == 0, made.stderr
    result = json.loads(made.stdout)
    run_id = result["run_id"]
    store = Store(home)
    try:
        kept = curate(store, run_id, 4, threshold=0.95, diversity=0.3).renders
        top = curate(store, run_id, 4, threshold=0.95, diversity=0.0).renders
        assert [r["id"] for r in result["best"]] == [r.id for r in kept]  # make returned the portfolio
        from reverie.orchestrator.curation import pixel_signature

        assert vendi([pixel_signature(r.path) for r in kept]) > vendi([pixel_signature(r.path) for r in top])
        assert "Vendi" in portfolio_line(store, run_id, 4)
    finally:
        store.close()
    shown = run_cli("show", run_id, home=home)
    assert shown.returncode == 0, shown.stderr
    assert "portfolio of 4 (diversity 0.3): Vendi" in shown.stdout and "top-4's" in shown.stdout


def test_diversity_out_of_range_is_one_line(home):
    bad = run_cli("make", "a harbour", "--diversity", "5", home=home)
    assert bad.returncode != 0 and "--diversity 5" in bad.stderr and "Traceback" not in bad.stderr
