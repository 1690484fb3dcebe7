"""The held-out judge is scored and stored but never selects; HPS v2.1 through open_clip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reverie.scoring import synthetic
from reverie.scoring.held_out import describe, selection_check
from reverie.scoring.scorer import make_scorer
from reverie.types import ReverieError
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def tiny_hps(tmp_path_factory):
    from reverie.scoring.tiny import write_tiny_hps

    return write_tiny_hps(tmp_path_factory.mktemp("hps"))


def images(n=3):
    return [synthetic.KINDS[k](np.random.default_rng(i), 64) for i, k in enumerate(["clean", "blurred", "static"][:n])]


def test_hps_scores_are_the_open_clip_cosine(tiny_hps):
    import open_clip

    from reverie.scoring.hps import HpsScorer

    prompts = ["a fox", "a red fox in the rain", "a lighthouse"]
    scores = HpsScorer(tiny_hps["hps_weights"], model_name="reverie-tiny-clip").score(images(), prompts)
    model, _, preprocess = open_clip.create_model_and_transforms("reverie-tiny-clip", pretrained=None)
    model.load_state_dict(torch.load(tiny_hps["hps_weights"])["state_dict"])
    with torch.no_grad():
        img = torch.nn.functional.normalize(model.encode_image(torch.stack([preprocess(i) for i in images()])), dim=-1)
        txt = torch.nn.functional.normalize(model.encode_text(open_clip.get_tokenizer("reverie-tiny-clip")(prompts)), dim=-1)
    assert scores == pytest.approx((img * txt).sum(-1).tolist(), abs=1e-5)


def test_hps_joins_the_ensemble_unless_it_is_the_held_out_judge(tiny_scoring, tiny_hps):
    prompts = ["a fox"] * 3
    joined = make_scorer("clip", table={**tiny_scoring, **tiny_hps, "held_out": "off"}, device="cpu")
    held = make_scorer("clip", table={**tiny_scoring, **tiny_hps, "held_out": "hps"}, device="cpu")
    plain = make_scorer("clip", table={**tiny_scoring, "held_out": "off"}, device="cpu")
    assert joined.name == "clip+aesthetic+hps" and joined.held_out is None
    assert held.name == "clip+aesthetic" and held.held_out.name == "hps"
    a, b, c = (s.score(images(), prompts, prompts) for s in (joined, held, plain))
    for x, y, z in zip(a, b, c):
        assert "hps" in x.values and "held_out:hps" not in x.values
        assert y.values["held_out:hps"] == pytest.approx(x.values["hps"], abs=1e-5)
        # The judge is stored but the composite is exactly what it is without it.
        assert y.composite == z.composite
    for s in (joined, held, plain):
        s.close()


def test_the_scorer_says_what_its_held_out_judge_is(tiny_hps):
    none = make_scorer("heuristic", table={"held_out": "pickscore", "pickscore": "off"})
    assert none.held_out is None and "reverie models pull pickscore" in describe(none.held_out)
    judged = make_scorer("heuristic", table={**tiny_hps, "held_out": "hps"}, device="cpu")
    assert "held-out judge: hps" in describe(judged.held_out)
    out = judged.score(images(2), ["a fox", ""], ["a fox", ""])
    assert "held_out:hps" in out[0].values and "held_out:hps" not in out[1].values  # no prompt: nothing to judge
    plain = make_scorer("heuristic", table={"held_out": "off"}).score(images(2), ["a fox", ""], ["a fox", ""])
    assert [o.composite for o in out] == [p.composite for p in plain]
    with pytest.raises(ReverieError, match="held_out = 'vlm'"):
        make_scorer("heuristic", table={"held_out": "vlm"})
    with pytest.raises(ReverieError, match="reverie models pull hps"):
        make_scorer("heuristic", table={"held_out": "hps", "hps_weights": "/nowhere/hps.pt"})


def test_selection_check_compares_kept_with_the_rest():
    from reverie.types import Scores

    def s(v):
        return Scores(values={"held_out:pickscore": v}, composite=0.5, scorer="heuristic")

    line = selection_check([s(23.2), s(22.0)], [s(20.3), s(20.3)])
    assert line.startswith("held-out judge pickscore") and "kept mean percentile 85" in line and "renders mean percentile 25" in line
    assert "reverie models pull pickscore" in selection_check([Scores({}, 0.4, "heuristic")], [])


def test_show_lineage_and_report_carry_the_held_out_judge(tmp_path, tiny_hps):
    import json

    from reverie.orchestrator.studio import Studio

    for judged in (True, False):
        home = tmp_path / ("judged" if judged else "plain")
        home.mkdir()
        scoring = {**tiny_hps, "held_out": "hps"} if judged else {"held_out": "off"}
        (home / "reverie.toml").write_text("[scoring]\n" + "".join(f'{k} = "{v}"\n' for k, v in scoring.items()))
        with Studio(home=home, engine="fixed", scorer="heuristic", engine_options={"latency": 0}) as studio:
            result = studio.make("a fox in the rain", n=3, rounds=1, seed=5, megapixels=0.02)
        stored = [r.scores for r in result.renders]
        assert all(("held_out:hps" in s.values) == judged for s in stored)
        shown = run_cli("show", result.run_id, home=home)
        assert shown.returncode == 0, shown.stderr
        lineage = run_cli("lineage", str(result.renders[0].id), home=home)
        if judged:
            assert "held-out judge hps (never used to select): kept mean percentile" in shown.stdout
            assert "held-out judge hps" in lineage.stdout
        else:
            assert "held-out judge: none (`reverie models pull pickscore` adds one" in shown.stdout
            assert "no held-out judge" in lineage.stdout
        assert json.loads(run_cli("lineage", str(result.renders[0].id), "--json", home=home).stdout)


def test_batch_report_carries_the_held_out_judge(tmp_path, tiny_hps):
    from reverie.orchestrator.studio import Studio

    home = tmp_path / "home"
    home.mkdir()
    (home / "reverie.toml").write_text("[scoring]\n" + "".join(f'{k} = "{v}"\n' for k, v in {**tiny_hps, "held_out": "hps"}.items()))
    with Studio(home=home, engine="fixed", scorer="heuristic", engine_options={"latency": 0}) as studio:
        ideas = tmp_path / "ideas.txt"
        ideas.write_text("a fox\na lighthouse\n")
        result = studio.batch(ideas, per_prompt=3, keep=1, megapixels=0.02)
    html = open(result.report_path, encoding="utf-8").read()
    assert html.count("held-out judge hps (never used to select): kept mean percentile") == 2
