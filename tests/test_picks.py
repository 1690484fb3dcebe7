"""Picks and rejects: recorded in the store from the real CLI, the newest choice standing."""

from __future__ import annotations

import json

from reverie.store.db import Store
from tests.conftest import run_cli


def test_pick_and_reject_from_the_cli(home):
    made = run_cli("make", "a red fox", "--n", "3", "--rounds", "1", "--json", home=home)
    assert made.returncode == 0, made.stderr
    images = json.loads(made.stdout)["best"]
    first, second = images[0]["path"], images[1]["id"]

    r = run_cli("pick", first, "--note", "the light", home=home)
    assert r.returncode == 0, r.stderr
    assert "picked render" in r.stdout
    r = run_cli("reject", str(second), home=home)
    assert r.returncode == 0 and "rejected render" in r.stdout

    store = Store(home)
    ids = [img["id"] for img in images]
    assert store.picks.standing() == {ids[0]: "pick", ids[1]: "reject"}
    # A reject after a pick takes it back; the history keeps both.
    assert run_cli("reject", str(ids[0]), home=home).returncode == 0
    assert Store(home).picks.standing([ids[0]]) == {ids[0]: "reject"}
    assert [h["choice"] for h in Store(home).picks.history(ids[0])] == ["pick", "reject"]
    labelled = Store(home).picks.labelled()
    assert {row["render_id"] for row in labelled} == {ids[0], ids[1]}
    assert all("composite" in row["scores"] for row in labelled)


def test_pick_of_an_unknown_image_is_one_line_and_records_nothing(home):
    run_cli("make", "a red fox", "--n", "1", "--rounds", "1", home=home)
    r = run_cli("pick", "1", "999", home=home)
    assert r.returncode == 2
    assert "no render matches '999'" in r.stderr and "Traceback" not in r.stderr
    assert Store(home).picks.standing() == {}  # the good one was not recorded either
