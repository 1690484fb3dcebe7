"""One registry of scorers: reverie's own components are entries like a plugin's (name, scale,
role, share), with a `load` that scores on its own; `taste`, `reverie models` and plugin name
checks all read it."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from reverie.scoring import composite, heuristic, plugins, taste
from reverie.scoring.explain import explain_scores
from reverie.scoring.scorer import make_scorer
from reverie.types import ReverieError
from tests.conftest import REPO, run_cli


def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)),
            Image.fromarray(np.full((48, 64, 3), 120, dtype=np.uint8))]


def test_every_built_in_component_is_a_registry_entry_with_its_scale_and_role():
    entries = {p.name: p for p in plugins.built_ins()}
    assert set(entries) == set(composite.DEFAULT_WEIGHTS) | set(heuristic.WEIGHTS)
    for name, quantiles in composite.REFERENCES.items():
        assert entries[name].quantiles == quantiles and entries[name].family == "clip"
    assert all(entries[n].quantiles is None and entries[n].family == "heuristic" for n in heuristic.WEIGHTS)
    assert all(p.role == "select" for p in entries.values())
    assert plugins.find("hps").weight == composite.DEFAULT_WEIGHTS["hps"]
    # taste starts from the registry's shares, which are the scorers' own defaults
    assert taste.default_weights("heuristic") == heuristic.WEIGHTS
    assert taste.default_weights("clip") == composite.DEFAULT_WEIGHTS
    with pytest.raises(ReverieError, match="no scorer component named"):
        plugins.find("nope")


def test_a_plugin_may_not_take_a_built_in_name():
    clash = plugins.ScorerPlugin(name="sharpness", load=lambda s: (lambda i, p: [0.5] * len(i)))
    with pytest.raises(ReverieError, match="reuses the name of a built-in"):
        plugins.register_reference(clash)


def test_a_built_in_entry_scores_alone_as_its_scorer_does(tiny_scoring):
    pics, prompts = images(), ["a fox", "a grey card"]
    values = [s.values for s in heuristic.HeuristicScorer().score(pics, prompts, prompts)]
    for name in heuristic.WEIGHTS:
        assert plugins.find(name).load({})(pics, prompts) == [v[name] for v in values]
    clip = make_scorer("clip", table={**tiny_scoring, "held_out": "off", "pickscore": "off", "hps_weights": "off"},
                       device="cpu")
    try:
        scored = clip.score(pics, prompts, prompts)
    finally:
        clip.close()
    alone = plugins.find("prompt_match").load({**tiny_scoring, "device": "cpu"})(pics, prompts)
    assert np.allclose(alone, [s.values["prompt_match"] for s in scored], atol=1e-4)
    aesthetic = plugins.find("aesthetic").load({**tiny_scoring, "device": "cpu"})(pics, prompts)
    assert np.allclose(aesthetic, [s.values["aesthetic"] for s in scored], atol=1e-4)


def test_explain_says_a_plugins_component_in_its_own_words_against_its_quantiles(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "examples" / "scorer_plugin"))
    from reverie_warmth import PLUGIN  # the example plugin, as its entry point would hand it over

    judge = dataclasses.replace(PLUGIN, name="chill", role="judge", description="how cold it looks", quantiles=None)
    scores = {"composite": 0.61, "scorer": "clip+warmth", "warmth": 0.08, "held_out:chill": 0.4, "sparkle": 0.3}
    lines = explain_scores(scores, plugins=[PLUGIN, judge])
    assert lines["warmth"] == ("warmth 0.080 — how warm the colours are (red over blue); its own scale, higher is "
                               "better; better than 75% of reference images")  # 0.08 is its 75th percentile
    assert lines["held_out:chill"] == ("held_out:chill 0.400 — how cold it looks; 0..1 (taken as a quality), higher "
                                       "is better; a held-out judge: shown, never used to select")
    # A component whose plugin is not here (uninstalled since) still gets a line, saying less.
    assert lines["sparkle"] == "sparkle 0.300 — a scorer plugin's component; 0..1 (taken as a quality), higher is better"
    assert explain_scores(scores)["sparkle"] == lines["sparkle"]  # the installed registry: no such plugin
    assert lines["composite"].startswith("composite 0.610 — all selecting components in one")


def test_reverie_models_lists_the_built_in_components(tmp_path):
    r = run_cli("models", "--json", home=tmp_path / "home")
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout) if row["kind"] == "score component"}
    assert rows["faithfulness"]["quantiles"] == list(composite.REFERENCES["faithfulness"])
    assert rows["sharpness"]["where"] == "built in (heuristic scorer)" and rows["sharpness"]["role"] == "select"
    table = run_cli("models", home=tmp_path / "home")
    assert "score components (built in" in table.stdout and "faithfulness (clip, 0.35)" in table.stdout
