"""Scoring on a tiny open_clip model and a random aesthetic MLP, both loaded from real files."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

from reverie.scoring.aesthetic import AestheticMLP, load_aesthetic
from reverie.scoring.composite import composite, normalise
from reverie.scoring.dedupe import diverse_top, mean_similarity, near_duplicates
from reverie.scoring.scorer import make_scorer, scoring_settings
from reverie.scoring.tiny import TINY_CLIP_NAME
from reverie.types import ReverieError

PUBLISHED_KEYS = {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}


@pytest.fixture(scope="module")
def scorer(tiny_scoring):
    s = make_scorer("clip", table=tiny_scoring, pickscore="off", device="cpu", batch_size=4)
    yield s
    s.close()


def pictures(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray((rng.random((48 + 8 * i, 64, 3)) * 255).astype(np.uint8)) for i in range(n)]


def distinct_pictures() -> list[Image.Image]:
    red = Image.new("RGB", (64, 64), (200, 30, 30))
    gradient = np.zeros((64, 64, 3), np.uint8)
    gradient[..., 1] = np.linspace(0, 255, 64, dtype=np.uint8)[None, :]
    checks = (np.indices((64, 64)).sum(0) // 8 % 2 * 255).astype(np.uint8)
    return [red, Image.fromarray(gradient), Image.fromarray(np.stack([checks] * 3, -1))]


def test_aesthetic_mlp_has_the_published_layout_and_reloads_from_pth(tmp_path):
    torch.manual_seed(1)
    mlp = AestheticMLP()
    assert set(mlp.state_dict()) == PUBLISHED_KEYS
    assert [tuple(mlp.state_dict()[f"layers.{i}.weight"].shape) for i in (0, 2, 4, 6, 7)] == \
        [(1024, 768), (128, 1024), (64, 128), (16, 64), (1, 16)]
    path = tmp_path / "aesthetic.pth"
    torch.save(mlp.state_dict(), path)
    loaded = load_aesthetic(path)
    x = torch.nn.functional.normalize(torch.randn(3, 768), dim=-1)
    with torch.no_grad():
        assert torch.allclose(loaded(x), mlp.eval()(x))
    assert loaded(x).shape == (3,)


def test_aesthetic_bad_files_are_one_line(tmp_path):
    with pytest.raises(ReverieError, match="models pull laion-aesthetic-v2"):
        load_aesthetic(tmp_path / "missing.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(1, 2)}, wrong)
    with pytest.raises(ReverieError, match="not a LAION aesthetic"):
        load_aesthetic(wrong)


def test_clip_scorer_wiring_matches_open_clip_and_the_mlp(scorer, tiny_scoring):
    import open_clip

    images = pictures(3)
    ideas = ["a fox", "a fox", "a lighthouse"]
    prompts = ["a red fox in the rain, soft light", "a fox", "a lighthouse at dusk"]
    scores = scorer.score(images, ideas, prompts)
    assert scorer.name == "clip+aesthetic"
    assert len(scores) == 3
    # An independent model built from the same files gives the same similarities.
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_CLIP_NAME, pretrained=tiny_scoring["clip_weights"])
    tokenizer = open_clip.get_tokenizer(TINY_CLIP_NAME)
    mlp = load_aesthetic(tiny_scoring["aesthetic_weights"])
    with torch.no_grad():
        img = torch.nn.functional.normalize(model.encode_image(torch.stack([preprocess(i) for i in images])), dim=-1)
        idea = torch.nn.functional.normalize(model.encode_text(tokenizer(ideas)), dim=-1)
        prompt = torch.nn.functional.normalize(model.encode_text(tokenizer(prompts)), dim=-1)
        aesthetic = mlp(img)
    for i, s in enumerate(scores):
        assert set(s.values) == {"faithfulness", "prompt_match", "aesthetic"}
        assert s.values["faithfulness"] == pytest.approx(float(img[i] @ idea[i]), abs=1e-4)
        assert s.values["prompt_match"] == pytest.approx(float(img[i] @ prompt[i]), abs=1e-4)
        assert s.values["aesthetic"] == pytest.approx(float(aesthetic[i]), abs=1e-4)
        assert 0.0 <= s.composite <= 1.0
        assert s.composite == pytest.approx(composite(s.values, scorer.weights)[0], abs=1e-5)
        assert np.linalg.norm(s.embedding) == pytest.approx(1.0, abs=1e-5)
        assert np.allclose(s.embedding, img[i].numpy(), atol=1e-5)
    # Same idea, same image set: faithfulness is the image-vs-idea cosine, not the prompt's.
    assert scores[1].values["faithfulness"] == scores[1].values["prompt_match"]


def test_one_image_forward_pass_per_batch_serves_similarity_and_aesthetics(scorer):
    calls: list[int] = []
    handle = scorer.clip.model.visual.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    try:
        scorer.score(pictures(6), ["a fox"] * 6, ["a fox at dawn"] * 6)
    finally:
        handle.remove()
    assert calls == [4, 2]  # batch size 4: two image-tower forwards for six images, nothing else


def test_batch_scores_equal_one_by_one_scores(scorer):
    images = pictures(5, seed=3)
    ideas = ["a fox", "a cat", "a fox", "a dog", "a tree"]
    prompts = [f"{idea}, detailed photograph" for idea in ideas]
    batched = scorer.score(images, ideas, prompts)
    single = [scorer.score([im], [i], [p])[0] for im, i, p in zip(images, ideas, prompts)]
    for b, s in zip(batched, single):
        assert b.values.keys() == s.values.keys()
        for k in b.values:
            assert b.values[k] == pytest.approx(s.values[k], abs=2e-4)
        assert b.composite == pytest.approx(s.composite, abs=2e-4)
        assert np.allclose(b.embedding, s.embedding, atol=1e-4)


def test_image_without_a_prompt_leaves_similarity_out(scorer):
    s = scorer.score(pictures(1), [""], [""])[0]
    assert set(s.values) == {"aesthetic"}
    assert s.composite == pytest.approx(normalise("aesthetic", s.values["aesthetic"]), abs=1e-5)


def test_mismatched_lengths_are_one_line(scorer):
    with pytest.raises(ReverieError, match="one of each per image"):
        scorer.score(pictures(2), ["a"], ["a", "b"])


def test_composite_normalises_each_scale_to_reference_percentiles():
    from reverie.scoring.composite import REFERENCES

    for name, ref in REFERENCES.items():
        assert normalise(name, ref[3]) == pytest.approx(0.5)  # the reference median is the 50th percentile
        assert normalise(name, ref[0] - 1) == 0.0 and normalise(name, ref[-1] + 1) == 1.0
        assert normalise(name, ref[2]) == pytest.approx(0.25) and normalise(name, ref[4]) == pytest.approx(0.75)
    assert normalise("sharpness", 1.7) == 1.0  # no reference: a 0..1 quality, clamped
    value, parts = composite({"faithfulness": 0.255, "aesthetic": 6.3}, {"faithfulness": 1.0, "aesthetic": 1.0})
    assert parts == {"faithfulness": pytest.approx(0.5), "aesthetic": pytest.approx(0.75)}
    assert value == pytest.approx(0.75 * 0.625 + 0.25 * 0.5)  # mean, pulled towards the weaker verifier
    # A component without weight is stored but does not count; nor does a held-out judge.
    assert composite({"faithfulness": 0.255, "pickscore": 26.0}, {"faithfulness": 1.0})[0] == pytest.approx(0.5)
    assert composite({"faithfulness": 0.255, "held_out:pickscore": 26.0},
                     {"faithfulness": 1.0, "held_out:pickscore": 5.0})[0] == pytest.approx(0.5)


def test_composite_weights_come_from_the_scoring_table(tiny_scoring):
    images = pictures(2)
    only_aesthetic = make_scorer("clip", table={**tiny_scoring, "weights": {"faithfulness": 0, "prompt_match": 0, "aesthetic": 1}},
                                 pickscore="off", device="cpu")
    s = only_aesthetic.score(images, ["a fox"] * 2, ["a fox"] * 2)
    for x in s:
        assert x.composite == pytest.approx(normalise("aesthetic", x.values["aesthetic"]), abs=1e-5)
    only_aesthetic.close()


@pytest.mark.parametrize("table, words", [
    ({"batch_size": 0}, "batch_size"),
    ({"weights": {"aesthetic": -1}}, "negative"),
    ({"weights": {"aesthetic": "lots"}}, "not a number"),
    ({"dedupe_threshold": 3}, "dedupe_threshold"),
    ({"clip_wieghts": "x"}, "unknown [scoring] setting 'clip_wieghts'"),
])
def test_bad_scoring_settings_are_one_line(table, words):
    with pytest.raises(ReverieError) as e:
        scoring_settings(table)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_dedupe_threshold_and_pickscore_off_come_from_the_table():
    assert make_scorer("heuristic", table={"dedupe_threshold": 0.9}).dedupe_threshold == 0.9
    assert scoring_settings({"pickscore": False}).pickscore == "off"


def test_settings_merge_table_env_and_options(monkeypatch):
    monkeypatch.setenv("REVERIE_AESTHETIC_WEIGHTS", "/env/a.pth")
    s = scoring_settings({"aesthetic_weights": "/toml/a.pth", "clip_weights": "/toml/c.pt", "batch_size": 8}, clip_weights="/opt/c.pt")
    assert (s.aesthetic_weights, s.clip_weights, s.batch_size) == ("/env/a.pth", "/opt/c.pt", 8)


def test_a_duplicated_image_is_dropped_from_the_diverse_set(scorer, tmp_path):
    images = distinct_pictures()
    copy_path = tmp_path / "copy.png"
    images[0].save(copy_path)
    images.append(Image.open(copy_path).convert("RGB"))
    scores = scorer.score(images, ["a fox"] * 4, ["a fox"] * 4)
    order = sorted(range(4), key=lambda i: -scores[i].composite)
    ranked = [scores[i].embedding for i in order]
    kept = [order[i] for i in diverse_top(ranked, k=4, threshold=0.95)]
    assert len(kept) == 3 and {1, 2} <= set(kept) and len({0, 3} & set(kept)) == 1
    dupes = near_duplicates(ranked, threshold=0.95)
    assert len(dupes) == 1
    (dropped, original), = dupes.items()
    assert {order[dropped], order[original]} == {0, 3}
    # The judge's "too alike" signal: a set of copies is alike, the distinct set much less so.
    assert mean_similarity([scores[0].embedding] * 3) == pytest.approx(1.0)
    assert mean_similarity([s.embedding for s in scores[:3]]) < 0.95


def test_auto_is_clip_when_weights_are_configured(tiny_scoring):
    s = make_scorer("auto", table=tiny_scoring, pickscore="off", device="cpu")
    assert s.name == "clip+aesthetic" and s.honest_note == ""
    s.close()
    no_aesthetic = make_scorer("auto", table={k: v for k, v in tiny_scoring.items() if k != "aesthetic_weights"},
                               pickscore="off", device="cpu")
    assert no_aesthetic.name == "clip" and "without aesthetics" in no_aesthetic.honest_note
    no_aesthetic.close()


def test_auto_falls_back_to_the_heuristic_and_says_why(tmp_path, monkeypatch):
    import huggingface_hub.constants

    # An empty cache: this machine's own downloads must not change the answer.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HOME", str(tmp_path))
    s = make_scorer("auto", table={})
    assert s.name == "heuristic"
    assert "no CLIP weights" in s.honest_note and "reverie models pull clip-vit-l-14" in s.honest_note
    assert make_scorer("heuristic", table={}).name == "heuristic"
    with pytest.raises(ReverieError, match="no CLIP weights"):
        make_scorer("clip", table={})
    with pytest.raises(ReverieError, match="CLIP weights .* do not exist"):
        make_scorer("auto", table={"clip_weights": str(tmp_path / "nope.pt")})
    with pytest.raises(ReverieError, match="unknown scorer"):
        make_scorer("clipp", table={})


def test_aesthetic_needs_a_matching_backbone(tiny_scoring, tmp_path):
    wide = tmp_path / "wide.pth"
    torch.save(AestheticMLP(768).state_dict(), wide)
    with pytest.raises(ReverieError, match="768-wide embeddings .* gives 32"):
        make_scorer("clip", table={**tiny_scoring, "aesthetic_weights": str(wide)}, pickscore="off", device="cpu")


def test_heuristic_scorer_is_named_and_in_range():
    s = make_scorer("heuristic", table={})
    out = s.score(distinct_pictures(), ["x"] * 3, ["x"] * 3)
    assert all(o.scorer == "heuristic" and 0 <= o.composite <= 1 for o in out)
    assert set(out[0].values) == {"sharpness", "noise", "exposure", "contrast", "colourfulness"}


@pytest.mark.slow  # imports transformers and builds a second tiny model
def test_pickscore_joins_when_its_folder_is_present(tiny_scoring, tmp_path):
    from reverie.scoring.pickscore import PickScorer
    from reverie.scoring.tiny import write_tiny_pickscore

    folder = write_tiny_pickscore(tmp_path / "pickscore")
    s = make_scorer("clip", table={**tiny_scoring, "pickscore": folder, "held_out": "off"}, device="cpu", batch_size=2)
    assert s.name == "clip+aesthetic+pickscore"
    images, prompts = pictures(3), ["a fox", "a red fox, 2 tails", "a lighthouse"]
    scores = s.score(images, prompts, prompts)
    direct = PickScorer(folder).score(images, prompts)
    for x, d in zip(scores, direct):
        assert set(x.values) == {"faithfulness", "prompt_match", "aesthetic", "pickscore"}
        assert x.values["pickscore"] == pytest.approx(d, abs=1e-3)
        assert x.composite == pytest.approx(composite(x.values, s.weights)[0], abs=1e-5)
    s.close()
    with pytest.raises(ReverieError, match="has no config.json"):
        make_scorer("clip", table={**tiny_scoring, "pickscore": str(tmp_path)}, device="cpu")
    assert make_scorer("clip", table={**tiny_scoring, "pickscore": "off"}, device="cpu").name == "clip+aesthetic"
