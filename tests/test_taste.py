"""Taste: picks that follow a hidden weighting teach `reverie taste` a composite that orders
new images the way the person would, better than the default does."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from reverie.orchestrator.studio import Studio
from reverie.render.fixed import FixedLatencyEngine
from reverie.scoring import heuristic
from reverie.scoring.synthetic import clean
from reverie.scoring.taste import fit_pairs, learn
from reverie.store.db import Store
from tests.conftest import run_cli

# The person cares for colour and exposure and does not mind blur or grain: far from the default.
HIDDEN = {"colourfulness": 0.55, "exposure": 0.3, "contrast": 0.15, "sharpness": 0.0, "noise": 0.0}
SMALL = dict(n=16, rounds=1, megapixels=0.01)


class VariedEngine(FixedLatencyEngine):
    """Pictures whose blur, grain, exposure and saturation vary independently with the seed, so
    every heuristic component spreads."""

    name = "varied"

    @staticmethod
    def image_for(spec):
        rng = np.random.default_rng([spec.seed, 14])
        image = clean(rng, side=64).filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0, 2.5))))
        image = ImageEnhance.Color(image).enhance(float(rng.uniform(0.0, 1.6)))
        a = np.asarray(image, dtype=np.float32) * rng.uniform(0.35, 1.6) + rng.normal(0, rng.uniform(0, 25), (64, 64, 3))
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).resize((spec.width, spec.height))


def utility(values: dict) -> float:
    return sum(w * math.log(max(heuristic.FLOOR, values[k])) for k, w in HIDDEN.items())


def pair_agreement(renders, score) -> float:
    """Share of pairs of renders that `score` orders as the hidden utility does."""
    agree = total = 0
    for i, a in enumerate(renders):
        for b in renders[i + 1:]:
            du = utility(a.scores.values) - utility(b.scores.values)
            if du == 0:
                continue
            total += 1
            agree += (score(a) - score(b)) * du > 0
    return agree / total


def test_taste_learnt_from_picks_beats_the_default_on_new_images(home):
    with Studio(home=home, engine=VariedEngine(latency=0.0), scorer="heuristic") as studio:
        training = [studio.make(idea, seed=seed, **SMALL) for idea, seed in (("a garden", 1), ("a harbour", 100),
                                                                             ("a market", 200))]
    picks, rejects = [], []
    for result in training:
        ranked = sorted(result.renders, key=lambda r: utility(r.scores.values), reverse=True)
        picks += [str(r.id) for r in ranked[:5]]
        rejects += [str(r.id) for r in ranked[-5:]]
    assert run_cli("pick", *picks, home=home).returncode == 0
    assert run_cli("reject", *rejects, home=home).returncode == 0

    r = run_cli("taste", "--json", home=home)
    assert r.returncode == 0, r.stderr
    fit = json.loads(r.stdout)
    assert fit["picks"] == 15 and fit["rejects"] == 15 and fit["adopted"]
    assert fit["agreement"] > fit["default_agreement"]
    # What it learnt leans the way the person does.
    assert fit["weights"]["colourfulness"] > fit["default_weights"]["colourfulness"]
    assert fit["weights"]["noise"] < fit["default_weights"]["noise"]
    shown = run_cli("taste", home=home)  # the table names the weights and both agreements
    assert shown.returncode == 0 and "colourfulness" in shown.stdout and "held-out agreement" in shown.stdout

    # New images, never picked: the composite the run stored now follows the person better.
    with Studio(home=home, engine=VariedEngine(latency=0.0), scorer="heuristic") as studio:
        fresh = studio.make("a lighthouse", seed=5000, n=24, rounds=1, megapixels=0.01).renders
    assert {r.scores.details.get("weighting") for r in fresh} == {f"taste {fit['taste_id']}"}
    traced = run_cli("lineage", str(fresh[0].id), "--json", home=home)
    assert json.loads(traced.stdout)["weighting"] == f"taste {fit['taste_id']}"
    assert f"taste {fit['taste_id']} weighting" in " ".join(run_cli("lineage", str(fresh[0].id), home=home).stdout.split())
    learnt = pair_agreement(fresh, lambda r: r.scores.composite)
    default = pair_agreement(fresh, lambda r: heuristic.combine(r.scores.values, heuristic.WEIGHTS))
    assert learnt > default + 0.1, (learnt, default)

    # `reverie score` on a folder ranks with the learnt weighting too (and says so), unless told not to.
    folder = [str(home / r.path) for r in fresh[:6]]
    with_taste = json.loads(run_cli("score", *folder, "--scorer", "heuristic", "--json", home=home).stdout)
    assert with_taste["weighting"] == f"taste {fit['taste_id']}"
    composites = {Path(i["path"]).name: i["composite"] for i in with_taste["images"]}
    assert composites == {Path(p).name: pytest.approx(r.scores.composite, abs=1e-4) for p, r in zip(folder, fresh)}
    plain = json.loads(run_cli("score", *folder, "--scorer", "heuristic", "--no-taste", "--json", home=home).stdout)
    assert plain["weighting"] == "default" and plain["images"] != with_taste["images"]
    assert f"your taste {fit['taste_id']} weighting" in run_cli("score", *folder, "--scorer", "heuristic", home=home).stdout

    assert run_cli("taste", "--reset", home=home).returncode == 0
    assert Store(home).tastes.active() == {}
    with Studio(home=home, engine=VariedEngine(latency=0.0), scorer="heuristic") as studio:
        again = studio.make("a lighthouse", seed=6000, n=2, rounds=1, megapixels=0.01).renders
    assert {r.scores.details.get("weighting") for r in again} == {"default"}


def test_taste_without_enough_choices_is_one_line(home):
    r = run_cli("taste", home=home)
    assert r.returncode == 2 and "reverie pick IMAGE" in r.stderr and "Traceback" not in r.stderr


def test_pairwise_fit_recovers_a_hidden_direction():
    rng = np.random.default_rng(3)
    truth = np.array([0.7, 0.3, 0.0])
    x = rng.normal(size=(400, 3))
    u = x @ truth
    order = np.argsort(u)
    diffs = x[order[-100:]][:, None, :] - x[order[:100]][None, :, :]
    w = fit_pairs(diffs.reshape(-1, 3))
    w = w / w.sum()
    assert w[0] > w[1] > w[2] and w[2] < 0.1


def test_learn_needs_picks_and_rejects():
    import pytest

    from reverie.types import ReverieError

    rows = [{"choice": "pick", "scores": {k: 0.5 for k in heuristic.WEIGHTS}}] * 5
    with pytest.raises(ReverieError, match="5 picks and 0 rejects"):
        learn(rows)


def test_chat_choices_record_picks_and_render_nothing(tmp_path):
    from reverie.orchestrator.chat import choice_in

    assert choice_in("I like the second one") == ("pick", 2)
    assert choice_in("not the first") == ("reject", 1)
    assert choice_in("I don't like the 3rd one.") == ("reject", 3)
    assert choice_in("more like the second one") is None and choice_in("keep the pose") is None
    home = tmp_path / "home"
    r = run_cli("chat", "--session", "s", "--n", "3", "--megapixels", "0.02", "--engine", "fixed", "--scorer",
                "heuristic", home=home, input="a fox in the rain\nI like the second one\nnot the first\n/quit\n")
    assert r.returncode == 0, r.stderr
    assert "picked #2" in r.stdout and "rejected #1" in r.stdout
    store = Store(home)
    assert len(store.db.execute("select id from runs").fetchall()) == 1  # the choices rendered nothing
    history = list(store.db.query("select choice, source from picks order by id"))
    assert history == [{"choice": "pick", "source": "chat"}, {"choice": "reject", "source": "chat"}]


def test_learn_on_clip_scores_follows_the_percentile_composite():
    from reverie.scoring.composite import REFERENCES

    rng = np.random.default_rng(7)
    names = ("faithfulness", "prompt_match", "aesthetic")
    rows = []
    for _ in range(60):
        values = {n: float(np.interp(rng.random(), (0, 1), (REFERENCES[n][1], REFERENCES[n][5]))) for n in names}
        rows.append(values)
    # This person judges by aesthetics alone; faithfulness, the default's heaviest, means nothing to them.
    ranked = sorted(rows, key=lambda v: v["aesthetic"], reverse=True)
    labelled = [{"choice": "pick", "scores": v} for v in ranked[:20]] + [{"choice": "reject", "scores": v}
                                                                          for v in ranked[-20:]]
    fit = learn(labelled)
    assert fit.family == "clip" and fit.picks == 20 and fit.rejects == 20
    assert fit.weights["aesthetic"] > 0.8 and fit.agreement > fit.default_agreement
