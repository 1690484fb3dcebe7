"""`reverie edit`: make's loop on a source image, lineage with image parents, reproduce, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reverie.orchestrator.studio import Studio
from reverie.store.pngmeta import file_sha256, read_reverie_meta
from reverie.types import ReverieError
from tests.conftest import run_cli


def picture(path: Path, size=(64, 48), seed=0, fmt=None) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8")).save(path, format=fmt)
    return path


def test_edit_cli_stores_edits_with_their_source_and_reproduce_matches(home, tmp_path):
    source = picture(tmp_path / "source.png")
    done = run_cli("edit", str(source), "make it night", "--n", "2", "--rounds", "1", "--seed", "3", "--json",
                   home=home)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result) == {"run_id", "home", "stop_reason", "renders", "best", "notices"}  # make's shape
    assert result["renders"] == 2 and len(result["best"]) == 2
    assert all((r["width"], r["height"]) == (64, 48) for r in result["best"])  # the source's size
    assert "not an instruction editor" in done.stderr  # the tiny engine edits by Z-Image img2img, and says so

    sha = file_sha256(source)
    for best in result["best"][:1]:
        info = json.loads(run_cli("lineage", str(best["id"]), "--json", home=home).stdout)
        assert info["edit"]["instruction"] == "make it night"
        assert info["edit"]["source_sha"] == sha and info["edit"]["source_render_id"] is None
        assert info["edit"]["chain"] == [{"render_id": None, "sha256": sha, "instruction": None, "origin": "file"}]
        meta = read_reverie_meta(best["path"])  # the PNG alone says what it came from
        assert meta["spec"]["source"]["image_sha"] == sha and meta["spec"]["source"]["instruction"] == "make it night"
        with Image.open(best["path"]) as im:
            assert f"Source: {sha[:12]}" in im.text["parameters"] and 'Instruction: "make it night"' in im.text["parameters"]

    shown = run_cli("show", result["run_id"], home=home).stdout
    assert f"edit of file {sha[:12]}: 'make it night'" in shown

    # An edit again from its source alone: identical pixels, whatever its place in its batch (the
    # second seed: given one source image, the pipeline encoded it with the batch's first generator).
    second = max(result["best"], key=lambda r: r["seed"])
    again = run_cli("reproduce", second["path"], home=home)
    assert again.returncode == 0 and "match: pixels identical" in again.stdout, again.stdout + again.stderr

    # The home keeps the source's bytes; with them gone, reproduce says so in one line.
    kept = Path(meta["spec"]["source"]["image_path"])
    assert file_sha256(kept) == sha
    kept.unlink()
    gone = run_cli("reproduce", result["best"][0]["path"], home=home)
    assert gone.returncode == 2 and "source image" in gone.stderr and "is gone" in gone.stderr
    assert len(gone.stderr.strip().splitlines()) == 1


def test_an_edit_of_an_edit_draws_the_chain_from_the_first_source(home, tmp_path):
    source = picture(tmp_path / "source.jpg", fmt="JPEG")
    with Studio(home=home, engine="tiny") as studio:
        first = studio.edit(str(source), "make it night", n=1, rounds=1, seed=1)
        parent = first.best[0]
        second = studio.edit(str(parent.id), "add a moon", n=1, rounds=1, seed=2)
        child = second.best[0]
        third = studio.edit(child.sha256[:10], "more stars", n=1, rounds=1, seed=3)
        from reverie.store.lineage import find_renders, lineage

        info = lineage(studio.store, find_renders(studio.store, str(third.best[0].id))[0])
        # A hash prefix of digits alone is still a hash prefix where no render has that id.
        with studio.store.lock, studio.store.db.conn:
            studio.store.db.execute("update renders set sha256 = ? where id = ?", ["1234567890" + child.sha256[10:], child.id])
        assert [r["id"] for r in find_renders(studio.store, "1234567890")] == [child.id]
        assert [r["id"] for r in find_renders(studio.store, str(child.id))] == [child.id]  # an id is still an id
    assert child.spec.source.render_id == parent.id and child.spec.source.image_sha == parent.sha256
    # Z-Image img2img repaints towards a description: a home render's own prompt, reworded to say the instruction.
    assert child.prompt == "make it night, with a moon"
    chain = info["edit"]["chain"]
    assert [c["origin"] for c in chain] == ["file", "render", "render"]
    assert chain[0]["sha256"] == file_sha256(source)
    assert [c["render_id"] for c in chain[1:]] == [parent.id, child.id]
    assert [c["instruction"] for c in chain[1:]] == ["make it night", "add a moon"]
    assert info["edit"]["instruction"] == "more stars"


def test_inpainting_keeps_what_the_mask_keeps(home, tmp_path):
    source = picture(tmp_path / "source.webp", fmt="WEBP")
    with Image.open(source) as im:
        size = im.size
    mask = np.zeros((size[1], size[0]), dtype="uint8")
    mask[:, : size[0] // 2] = 255  # change the left half only
    Image.fromarray(mask).save(tmp_path / "mask.png")
    with Studio(home=home, engine="tiny") as studio:
        result = studio.edit(str(source), "make it night", mask=str(tmp_path / "mask.png"), strength=1.0, n=1,
                             rounds=1, seed=4)
    render = result.best[0]
    assert render.spec.source.mask_sha == file_sha256(tmp_path / "mask.png")
    with Image.open(render.path) as out, Image.open(source) as src:
        a, b = np.asarray(out.convert("RGB"), dtype=int), np.asarray(src.convert("RGB"), dtype=int)
    # Outside the mask, the source's own pixels.
    kept = np.asarray(Image.open(source).convert("RGB"), dtype=int)[:, size[0] // 2:]
    assert np.array_equal(a[:, size[0] // 2:], kept)
    assert np.abs(a - b)[:, : size[0] // 2].mean() > 10  # the masked half is repainted


@pytest.mark.parametrize("case, words", [
    ("missing", "does not exist"),
    ("not-an-image", "not a readable image"),
    ("no-words", "has no words"),
    ("mask-size", "mask is 32x32 but the source is 64x48"),
    ("oversize", "at most 2048 px a side"),
    ("unknown-hash", "no image of this home matches"),
    ("engine", "the fixed engine cannot edit"),
])
def test_bad_edit_input_is_one_line_before_any_model_loads(home, tmp_path, case, words):
    source, instruction, extra = str(picture(tmp_path / "s.png")), "make it night", []
    if case == "missing":
        source = str(tmp_path / "nope.png")
    elif case == "not-an-image":
        (tmp_path / "text.png").write_text("hello")
        source = str(tmp_path / "text.png")
    elif case == "no-words":
        instruction = " ?! "
    elif case == "mask-size":
        extra = ["--mask", str(picture(tmp_path / "m.png", size=(32, 32)))]
    elif case == "oversize":
        source = str(picture(tmp_path / "big.png", size=(2100, 16)))
    elif case == "unknown-hash":
        source = "abcdef0123"
    elif case == "engine":
        extra = ["--engine", "fixed"]
    done = run_cli("edit", source, instruction, *extra, home=home)
    assert done.returncode == 2 and words in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr  # no "loading the engine" line either


def test_studio_edit_refuses_a_profile_that_cannot_edit(home, tmp_path):
    with Studio(home=home, engine="tiny") as studio:
        with pytest.raises(ReverieError, match="cannot edit images"):
            studio.edit(str(picture(tmp_path / "s.png")), "make it night", profile="sdxl")


def test_edit_scores_measure_what_was_kept_and_the_direction_of_the_change(tmp_path):
    from reverie.scoring.edit_scores import (directional_similarity, edit_composite, pixel_preservation,
                                             structure_preservation)

    source = Image.open(picture(tmp_path / "s.png", size=(64, 64)))
    flat = Image.new("RGB", (64, 64), (128, 128, 128))
    assert pixel_preservation(source, source) == 1.0 and structure_preservation(source, source) == pytest.approx(1.0)
    assert pixel_preservation(source, flat) < 0.9 and structure_preservation(source, flat) < 0.2
    half = np.asarray(source).copy()
    half[:, :32] = 0
    changed = Image.fromarray(half)
    mask = np.zeros((64, 64), dtype="uint8")
    mask[:, :32] = 255
    # Inside the mask the change was asked for: outside it, nothing moved.
    assert pixel_preservation(source, changed, Image.fromarray(mask)) == pytest.approx(1.0, abs=0.02)
    assert pixel_preservation(source, changed) < 0.9
    assert directional_similarity([0, 0], [1, 0], [0, 0], [2, 0]) == pytest.approx(1.0)
    assert directional_similarity([0, 0], [-1, 0], [0, 0], [2, 0]) == pytest.approx(-1.0)
    assert directional_similarity([0, 0], [0, 0], [0, 0], [2, 0]) == 0.0  # no change is no direction
    # The direction counts where it is known; without it, the other shares decide.
    assert edit_composite(0.5, {"preservation_pixels": 1.0, "preservation_structure": 1.0}) == pytest.approx(0.5 / 0.7 * 0.5 + 0.2 / 0.7, abs=1e-4)
    assert edit_composite(0.5, {"edit_direction": 0.5, "preservation_clip": 1, "preservation_pixels": 1,
                                "preservation_structure": 1}) == pytest.approx(0.25 + 0.2 + 0.3, abs=1e-4)


def test_an_edit_runs_composite_is_made_with_its_edit_scores(home, tmp_path):
    from reverie.scoring.edit_scores import edit_composite
    from reverie.scoring.heuristic import HeuristicScorer

    source = picture(tmp_path / "s.png")
    with Studio(home=home, engine="tiny", scorer="heuristic") as studio:
        result = studio.edit(str(source), "make it night", n=2, rounds=1, seed=8)
        stored = [studio.store.scores_for(r.id) for r in result.renders]
    for render, scores in zip(result.renders, stored):
        assert {"preservation_pixels", "preservation_structure"} <= set(scores.values)
        assert "edit_direction" not in scores.values  # no CLIP weights: no claim about the instruction
        with Image.open(render.path) as im:
            base = HeuristicScorer().score([im.convert("RGB")], [""], [""])[0].composite
        edit = {k: scores.values[k] for k in ("preservation_pixels", "preservation_structure")}
        assert scores.composite == pytest.approx(edit_composite(base, edit), abs=1e-4)
    assert any("heuristic" in n and "preservation" in n for n in result.notices)


def test_comfyui_edits_with_z_image_img2img_and_inpaints_inside_the_mask(home, tmp_path):
    from tests.comfy_server import ComfyServer

    source = picture(tmp_path / "s.png")
    mask = tmp_path / "m.png"
    Image.new("L", (64, 48), 0).save(mask)
    with ComfyServer() as s:
        done = run_cli("edit", str(source), "make it night", "--n", "1", "--rounds", "1", "--seed", "2",
                       "--comfy-url", s.url, "--json", home=home, timeout=120)
        assert done.returncode == 0, done.stderr
        workflow = s.workflows[-1]
        masked = run_cli("edit", str(source), "make it night", "--mask", str(mask), "--n", "1", "--rounds", "1",
                         "--comfy-url", s.url, "--json", home=home, timeout=120)
        assert masked.returncode == 0, masked.stderr
        inpaint = s.workflows[-1]
    classes = {n["class_type"]: n["inputs"] for n in workflow.values()}
    assert "LoadImage" in classes and "VAEEncode" in classes and classes["KSampler"]["denoise"] == 0.6
    best = json.loads(done.stdout)["best"][0]
    assert read_reverie_meta(best["path"])["spec"]["source"]["image_sha"] == file_sha256(source)  # lineage as on diffusers
    masked_classes = {n["class_type"] for n in inpaint.values()}
    assert {"LoadImageMask", "SetLatentNoiseMask", "ImageCompositeMasked"} <= masked_classes
    meta = read_reverie_meta(json.loads(masked.stdout)["best"][0]["path"])
    assert meta["spec"]["source"]["mask_sha"] == file_sha256(mask)


def test_comfyui_edits_with_an_instruction_editor_through_its_template_graph(home, tmp_path):
    from tests.comfy_server import ComfyServer

    source = picture(tmp_path / "s.png", size=(64, 64))
    kontext = {"unet_name": ["flux1-dev-kontext_fp8_scaled.safetensors"],
               "clip_name": ["clip_l.safetensors", "t5xxl_fp8_e4m3fn_scaled.safetensors"], "vae_name": ["ae.safetensors"]}
    with ComfyServer(models={**kontext, "vae_name": []}) as poor:
        refused = run_cli("edit", str(source), "make it night", "--profile", "flux1-kontext-dev", "--n", "1",
                          "--rounds", "1", "--comfy-url", poor.url, home=home, timeout=120)
    assert refused.returncode != 0 and "vae file ae.safetensors" in refused.stderr
    with ComfyServer(models=kontext) as s:
        done = run_cli("edit", str(source), "make it night", "--profile", "flux1-kontext-dev", "--n", "1",
                       "--rounds", "1", "--seed", "2", "--comfy-url", s.url, "--json", home=home, timeout=120)
        assert done.returncode == 0, done.stderr
        [workflow] = s.workflows
    classes = {n["class_type"]: n["inputs"] for n in workflow.values()}
    assert {"ReferenceLatent", "FluxGuidance", "VAEEncode", "LoadImage"} <= set(classes)
    assert classes["CLIPTextEncode"]["text"] == "make it night"
    best = json.loads(done.stdout)["best"][0]
    assert read_reverie_meta(best["path"])["spec"]["source"]["image_sha"] == file_sha256(source)

