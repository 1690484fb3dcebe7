"""The reference picker: kind choice, Canny preprocessing into the store, and bad reference files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from reverie.agents.references import choose_kind, load_reference, prepare_control
from reverie.orchestrator.studio import Studio
from reverie.store.db import Store
from reverie.store.pngmeta import content_path, file_sha256
from reverie.types import Reference, ReverieError
from tests.conftest import run_cli


def logo(path):
    im = Image.new("RGB", (160, 120), "white")
    d = ImageDraw.Draw(im)
    d.rectangle([30, 30, 130, 90], outline="black", width=4)
    d.ellipse([60, 40, 100, 80], fill="black")
    im.save(path)
    return path


def photo(path):
    rng = np.random.default_rng(0)
    gradient = np.linspace(0, 255, 160)[None, :, None] * np.ones((120, 1, 3))
    noise = rng.normal(0, 40, (120, 160, 3))
    Image.fromarray(np.clip(gradient + noise, 0, 255).astype(np.uint8)).save(path)
    return path


def test_choose_kind(tmp_path):
    line_art, scene = Image.open(logo(tmp_path / "l.png")), Image.open(photo(tmp_path / "p.png"))
    assert choose_kind("a castle like this one", scene)[0] == "img2img"
    assert choose_kind("a castle", line_art)[0] == "canny"
    assert choose_kind("a logo for a bakery", scene)[0] == "canny"
    assert choose_kind("a dancer mid-leap", scene)[0] == "pose"
    assert choose_kind("a castle on a hill", scene)[0] == "depth"


def test_canny_control_written_to_the_store(tmp_path):
    ref = logo(tmp_path / "logo.png")
    prepared = prepare_control(Reference(str(ref), "canny"), "a bakery sign", tmp_path / "models")
    store = Store(tmp_path / "home")
    sha, path = store.add_control(None, prepared.kind, str(ref), prepared.source_sha, prepared.data)
    again = store.add_control(None, prepared.kind, str(ref), prepared.source_sha, prepared.data)
    assert again == (sha, path) and path == content_path(store.images_dir, sha) and file_sha256(path) == sha
    edges = np.asarray(Image.open(path).convert("L"))
    assert set(np.unique(edges)) == {0, 255} and edges[26:38, 80].max() == 255 and edges[:20, :20].max() == 0
    store.close()


@pytest.mark.slow  # a whole run with the tiny control net: ~25 s on a shared 2-core box
def test_canny_control_is_stored_and_linked(home, tmp_path):
    ref = logo(tmp_path / "logo.png")
    with Studio(home=home, engine="tiny") as studio:
        result = studio.make("a bakery sign", n=1, rounds=1, seed=2, megapixels=0.01,
                             references=[{"path": str(ref), "control": "canny"}])
        [row] = studio.store.controls(result.run_id)
    assert row["kind"] == "canny" and row["source_sha"] == file_sha256(ref)
    stored = home / row["image_path"]
    assert file_sha256(stored) == row["image_sha"]  # content-addressed
    edges = np.asarray(Image.open(stored).convert("L"))
    assert edges.shape == (120, 160) and set(np.unique(edges)) == {0, 255}
    assert edges[26:38, 80].max() == 255 and edges[:20, :20].max() == 0  # the rectangle's edge; a blank corner
    [render] = result.renders
    assert render.spec.control is not None and render.spec.control.image_sha == row["image_sha"]
    assert render.spec.control.kind == "canny"


def test_img2img_keeps_the_reference_pixels(tmp_path):
    ref = photo(tmp_path / "p.png")
    prepared = prepare_control(Reference(str(ref), "img2img"), "a castle", tmp_path / "models")
    stored = tmp_path / "c.png"
    stored.write_bytes(prepared.data)
    assert np.array_equal(np.asarray(Image.open(stored)), np.asarray(Image.open(ref).convert("RGB")))


def test_depth_without_weights_names_the_command(tmp_path):
    ref = photo(tmp_path / "p.png")
    with pytest.raises(ReverieError) as e:
        prepare_control(Reference(str(ref), "depth"), "a castle", tmp_path / "models")
    assert "reverie models pull depth" in str(e.value) and "\n" not in str(e.value)
    # auto does not fail a run over weights nobody asked for: it says so and keeps the edges.
    auto = prepare_control(Reference(str(ref), "auto"), "a castle on a hill", tmp_path / "models")
    assert auto.kind == "canny" and "reverie models pull depth" in auto.note


def _truncated(tmp_path):
    good = logo(tmp_path / "whole.png").read_bytes()
    bad = tmp_path / "cut.png"
    bad.write_bytes(good[: len(good) // 2])
    return bad


@pytest.mark.parametrize("make, words", [
    (lambda d: d / "missing.png", "does not exist"),
    (lambda d: (d / "notes.png").write_text("just text") and d / "notes.png", "is not an image"),
    (_truncated, "truncated"),
])
def test_bad_reference_is_one_line(tmp_path, make, words):
    with pytest.raises(ReverieError) as e:
        load_reference(make(tmp_path))
    assert words in str(e.value) and "\n" not in str(e.value)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    ref = photo(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 160x120 is over this
    with pytest.raises(ReverieError, match="too large"):
        load_reference(ref)


def test_cli_bad_reference_is_one_line_and_nothing_starts(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    proc = run_cli("make", "a fox", "--engine", "tiny", "--ref", str(tmp_path / "notes.png"), home=tmp_path / "h")
    assert proc.returncode == 2
    assert "is not an image" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # imports transformers and builds a model: ~10 s
def test_depth_runs_a_local_model_when_its_weights_are_there(tmp_path):
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    # A tiny randomly initialised DPT, saved where `reverie models pull depth` puts real weights.
    weights = tmp_path / "models" / "depth"
    config = DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=37, image_size=32,
                       patch_size=8, neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=16,
                       backbone_out_indices=[0, 1, 2, 3], is_hybrid=False)
    DPTForDepthEstimation(config).save_pretrained(weights)
    DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False).save_pretrained(weights)
    ref = photo(tmp_path / "scene.png")
    prepared = prepare_control(Reference(str(ref), "auto"), "a castle on a hill", tmp_path / "models")
    assert prepared.kind == "depth" and prepared.note == ""
    out = tmp_path / "depth.png"
    out.write_bytes(prepared.data)
    assert Image.open(out).size == (160, 120)


def test_img2img_pixels_do_not_depend_on_the_position_in_the_batch(tmp_path, tiny_engine):
    """The source is encoded with each seed's own generator: a seed renders the same pixels first
    or second in its batch (the pipeline given one image encodes it with the first generator)."""
    from reverie.types import Control, RenderSpec

    ref = photo(tmp_path / "p.png")
    control = Control(kind="img2img", image_sha=file_sha256(ref), image_path=str(ref), strength=0.6)

    def spec(seed):
        return RenderSpec(prompt="a castle", seed=seed, width=64, height=64, steps=2, guidance=0.0,
                          profile="z-image-turbo", control=control)

    first = tiny_engine.render([spec(5), spec(9)])
    second = tiny_engine.render([spec(9), spec(5)])
    assert not any(o.error for o in (*first, *second))
    a, b = np.asarray(first[0].image, dtype=int), np.asarray(second[1].image, dtype=int)
    assert np.array_equal(a, b)
    assert np.abs(a - np.asarray(first[1].image, dtype=int)).max() > 0  # the seeds differ
