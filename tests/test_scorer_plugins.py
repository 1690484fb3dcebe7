"""A scorer plugin installed with pip (the example in examples/scorer_plugin) is found through the
`reverie.scorers` entry points, listed by `reverie models`, stored for every render, and weighed by
`reverie taste`."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> str:
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(REPO / "examples" / "scorer_plugin")],
                   check=True, capture_output=True, text=True, timeout=300)
    assert (target / "reverie_warmth" / "__init__.py").is_file()
    return str(target)


@pytest.mark.slow
def test_an_installed_plugin_is_listed_stored_and_weighed(home, plugin_path):
    env = {"PYTHONPATH": os.pathsep.join([plugin_path, os.environ.get("PYTHONPATH", "")])}
    listed = run_cli("models", "--json", home=home, env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["warmth"]["kind"] == "scorer plugin" and "reverie-warmth" in rows["warmth"]["where"]

    made = run_cli("make", "a red kite over a beach", "--n", "6", "--rounds", "1", "--json", home=home, env=env)
    assert made.returncode == 0, made.stderr
    with sqlite3.connect(home / "reverie.db") as db:
        renders = [r for (r,) in db.execute("select id from renders order by id")]
        warmth = dict(db.execute("select render_id, value from scores where name = 'warmth'").fetchall())
        scorers = {s for (s,) in db.execute("select distinct scorer from scores")}
    assert len(renders) == 6 and sorted(warmth) == renders  # every render has the plugin's component
    assert all(-1.0 <= v <= 1.0 for v in warmth.values())
    assert scorers == {"heuristic+warmth"}
    run_id = json.loads(made.stdout)["run_id"]
    shown = run_cli("show", run_id, "--explain", home=home, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "warmth " in shown.stdout and "how warm the colours are (red over blue); its own scale" in shown.stdout

    # Picks that follow warmth alone: taste must give the plugin's component weight.
    by_warmth = sorted(renders, key=lambda r: warmth[r])
    for r in by_warmth[3:]:
        assert run_cli("pick", str(r), home=home, env=env).returncode == 0
    for r in by_warmth[:3]:
        assert run_cli("reject", str(r), home=home, env=env).returncode == 0
    learnt = run_cli("taste", "--json", home=home, env=env)
    assert learnt.returncode == 0, learnt.stderr
    fit = json.loads(learnt.stdout)
    assert "warmth" in fit["weights"] and "warmth" in fit["default_weights"]
    assert fit["weights"]["warmth"] > 0


def test_without_the_plugin_nothing_changes(home):
    listed = run_cli("models", "--json", home=home)
    assert listed.returncode == 0, listed.stderr
    assert not [r for r in json.loads(listed.stdout) if r["kind"] == "scorer plugin"]
