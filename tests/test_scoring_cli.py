"""`reverie score`, the models catalogue, the benchmark and a run scored by CLIP, on real files."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reverie.store.pngmeta import encode_png
from reverie.types import ReverieError
from tests.conftest import REPO, run_cli


def toml_home(folder: Path, scoring: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["[scoring]"] + [f'{k} = "{v}"' for k, v in scoring.items()] + ["dedupe_threshold = 0.999"]
    (folder / "reverie.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A ComfyUI-like output folder: PNGs with A1111 prompts, a JPEG, a duplicate, a note, a nested dir."""
    d = tmp_path_factory.mktemp("outputs")
    rng = np.random.default_rng(5)
    sharp = Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8))
    flat = Image.new("RGB", (64, 64), (128, 128, 128))
    gradient = np.zeros((64, 64, 3), np.uint8)
    gradient[..., 0] = np.linspace(20, 230, 64, dtype=np.uint8)[:, None]
    gradient[..., 2] = 120
    (d / "a.png").write_bytes(encode_png(sharp, "a fox in the rain\nNegative prompt: blurry\nSteps: 9, Seed: 1", {}))
    (d / "b.png").write_bytes(encode_png(flat, "a grey wall\nSteps: 9, Seed: 2", {}))
    (d / "sub").mkdir()
    Image.fromarray(gradient).save(d / "sub" / "c.jpg", quality=95)
    (d / "sub" / "a-copy.png").write_bytes((d / "a.png").read_bytes())
    (d / "notes.txt").write_text("not an image")
    (d / "broken.png").write_bytes(b"not really a png")
    return d


def test_score_ranks_a_folder_with_the_heuristic(folder, tmp_path):
    proc = run_cli("score", str(folder), "--scorer", "heuristic", "--json", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["scorer"] == "heuristic" and result["skipped"] == 2  # notes.txt and broken.png
    images = result["images"]
    assert len(images) == 4 and [i["rank"] for i in images] == [1, 2, 3, 4]
    composites = [i["composite"] for i in images]
    assert composites == sorted(composites, reverse=True)
    by_name = {Path(i["path"]).name: i for i in images}
    assert by_name["a.png"]["prompt"] == "a fox in the rain"  # read from the PNG's own parameters
    assert by_name["c.jpg"]["prompt"] == ""
    assert by_name["b.png"]["composite"] < by_name["a.png"]["composite"]  # flat grey ranks below detail
    copies = [by_name["a.png"], by_name["a-copy.png"]]
    assert sorted(c["near_duplicate_of"] is None for c in copies) == [False, True]


def test_score_with_tiny_clip_from_the_toml_and_a_table(folder, tiny_scoring, tmp_path):
    home = toml_home(tmp_path / "home", tiny_scoring)
    proc = run_cli("score", str(folder / "a.png"), str(folder / "sub"), "--scorer", "clip", "--prompt", "a fox",
                   "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["scorer"] == "clip+aesthetic" and len(result["images"]) == 3
    for image in result["images"]:
        assert set(image["scores"]) == {"faithfulness", "prompt_match", "aesthetic"} and image["prompt"] == "a fox"
        assert 0.0 <= image["composite"] <= 1.0
    assert sum(i["near_duplicate_of"] is not None for i in result["images"]) == 1


@pytest.mark.slow
def test_score_table_view_with_tiny_clip(folder, tiny_scoring, tmp_path):
    home = toml_home(tmp_path / "home", tiny_scoring)
    table = run_cli("score", str(folder), "--scorer", "clip", "--top", "2", home=home)
    assert table.returncode == 0, table.stderr
    assert "ranked by clip+aesthetic" in table.stdout and "faithfulness" in table.stdout
    assert "skipped 2 file(s)" in table.stderr


def test_score_bad_paths_are_one_line(tmp_path):
    proc = run_cli("score", str(tmp_path / "nowhere"), home=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "does not exist" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    proc = run_cli("score", str(tmp_path / "empty"), home=tmp_path)
    assert proc.returncode == 2 and "no images" in proc.stderr


def test_scorer_models_list_and_offline_pull(tiny_scoring, tmp_path, monkeypatch):
    import huggingface_hub.constants

    from reverie.scoring.weights import scorer_models

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HOME", str(tmp_path))
    entries = {m.name: m for m in scorer_models()}
    assert list(entries) == ["clip-vit-l-14", "laion-aesthetic-v2", "pickscore", "hps"]
    assert not any(m.present for m in entries.values())
    configured = {m.name: m for m in scorer_models(tiny_scoring)}
    assert configured["clip-vit-l-14"].present and configured["clip-vit-l-14"].where == tiny_scoring["clip_weights"]
    assert configured["laion-aesthetic-v2"].present
    # No network here: huggingface_hub's offline mode fails at once, and the failure is one line.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ReverieError) as e:
        entries["laion-aesthetic-v2"].pull(lambda event: None)
    message = str(e.value)
    assert "could not download laion-aesthetic-v2" in message and "reverie models pull laion-aesthetic-v2" in message
    assert "\n" not in message


def test_benchmark_prints_the_ratio(monkeypatch, capsys):
    # In this process (torch is already imported), exactly as `python bench/bench_scoring.py ...` runs it.
    monkeypatch.setattr(sys, "argv", ["bench_scoring.py", "--n", "4", "--batch-size", "4", "--size", "64", "--device", "cpu"])
    runpy.run_path(str(REPO / "bench" / "bench_scoring.py"), run_name="__main__")
    printed = capsys.readouterr().out
    assert "one-by-one:" in printed and "batched (size   4):" in printed
    ratio = float(printed.split("ratio batched/one-by-one:")[1].strip().rstrip("x"))
    assert ratio > 0


def test_a_run_is_scored_by_clip_and_judged(home, tiny_scoring):
    """The loop with the tiny CLIP from reverie.toml: every component stored, the judge sees embeddings."""
    from reverie import Studio

    toml_home(home, tiny_scoring)
    events = []
    with Studio(home=home, engine="tiny") as studio:
        result = studio.make("a lighthouse at dusk", n=2, rounds=2, megapixels=0.05, seed=7, progress=events.append)
        assert studio.scorer(events.append).name == "clip+aesthetic"
    assert len(result.renders) == 4
    for r in result.renders:
        assert r.scores.scorer == "clip+aesthetic"
        assert set(r.scores.values) == {"faithfulness", "prompt_match", "aesthetic"}
        assert 0.0 <= r.scores.composite <= 1.0
    assert any(e.kind == "judged" for e in events)
    assert {e.data["scorer"] for e in events if e.kind == "scored"} == {"clip+aesthetic"}


def test_score_checks_paths_before_the_scorer_notice_and_says_it_once(folder, tmp_path):
    missing = run_cli("score", str(tmp_path / "no-such-folder"), home=tmp_path)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().splitlines() == [f"error: {tmp_path / 'no-such-folder'} does not exist: pass image "
                                                    "files or folders that hold them"]
    ranked = run_cli("score", str(folder), "--json", home=tmp_path)
    assert ranked.returncode == 0, ranked.stderr
    assert ranked.stderr.count("heuristic scorer") == 1


def test_score_on_an_export_folder_takes_the_json_sidecars_for_what_they_are(tmp_path):
    home = tmp_path / "home"
    made = run_cli("make", "a fox", "--engine", "fixed", "--n", "2", "--rounds", "1", "--megapixels", "0.02", "--json",
                   home=home)
    assert made.returncode == 0, made.stderr
    exported = run_cli("export", json.loads(made.stdout)["run_id"], str(tmp_path / "out"), "--top", "2", home=home)
    assert exported.returncode == 0, exported.stderr
    assert len(list((tmp_path / "out").glob("*.json"))) == 2
    (tmp_path / "out" / "stray.json").write_text("{}")  # a JSON file beside no image is still skipped
    proc = run_cli("score", str(tmp_path / "out"), "--scorer", "heuristic", home=home)
    assert proc.returncode == 0, proc.stderr
    assert "skipped 1 file(s) that are not readable images" in proc.stderr
    assert len([line for line in proc.stdout.splitlines() if line.startswith("#")]) == 2
