"""The instruction editors' real diffusers pipelines on tiny builds: the source is a reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from reverie.render.diffusers_engine import DiffusersEngine
from reverie.render.tiny import ensure_tiny_editor
from reverie.store.pngmeta import file_sha256, read_reverie_meta
from reverie.types import RenderSpec, Source
from tests.conftest import run_cli

EDITORS = ["flux2-klein-4b", "flux1-kontext-dev", "qwen-image-edit-2511"]


@pytest.mark.parametrize("profile", EDITORS)
def test_an_instruction_editor_edits_from_its_reference(tmp_path_factory, profile):
    work = tmp_path_factory.mktemp("editors")
    sources = []
    for seed in (0, 1):
        path = work / f"s{seed}.png"
        Image.fromarray((np.random.default_rng(seed).random((64, 96, 3)) * 255).astype("uint8")).save(path)
        sources.append(Source(image_sha=f"{seed}" * 64, image_path=str(path), width=96, height=64,
                              instruction="make it night"))
    where = str(ensure_tiny_editor(work / "models", profile))
    engine = DiffusersEngine(model_path=where, profile=profile, device="cpu", dtype="float32", batch_size=2)

    def spec(seed, source):
        return RenderSpec(prompt="make it night", seed=seed, width=96, height=64, steps=2,
                          guidance=engine.profile.guidance, profile=profile, source=source)

    pair = engine.render([spec(1, sources[0]), spec(2, sources[0])])
    other = engine.render([spec(1, sources[1])])[0]
    engine.close()
    assert all(o.image.size == (96, 64) and not o.error for o in pair), [o.error for o in pair]
    a, b, c = (np.asarray(o.image, dtype=int) for o in (*pair, other))
    assert np.abs(a - b).max() > 0  # seeds differ
    assert np.abs(a - c).max() > 0  # the reference image steers the result: another source, another image
    # The second seed alone, padded to the same batch shape, gives the same pixels as in the pair.
    padded = DiffusersEngine(model_path=where, profile=profile, device="cpu", dtype="float32", batch_size=2,
                             pad_batches=True)
    again = padded.render([spec(2, sources[0])])[0]
    padded.close()
    assert np.array_equal(np.asarray(again.image, dtype=int), b)


# Qwen's CLI round trip (an edit run of 40 steps, then reproduce) takes over two minutes on two
# shared cores; its pipeline is run above on every CI run.
@pytest.mark.parametrize("profile", ["flux2-klein-4b", "flux1-kontext-dev",
                                     pytest.param("qwen-image-edit-2511", marks=pytest.mark.slow)])
def test_the_cli_edits_with_a_tiny_instruction_editor_and_reproduces_it(home, tmp_path, profile):
    """`reverie edit --profile EDITOR --engine tiny`: the editor's own pipeline on tiny weights, its
    renders stored with their source and instruction, and reproduce gives the same pixels."""
    source = tmp_path / "source.png"
    Image.fromarray((np.random.default_rng(0).random((64, 96, 3)) * 255).astype("uint8")).save(source)
    done = run_cli("edit", str(source), "make it night", "--profile", profile, "--engine", "tiny", "--n", "2",
                   "--rounds", "1", "--seed", "3", "--json", home=home)
    assert done.returncode == 0, done.stderr
    assert "not an instruction editor" not in done.stderr
    result = json.loads(done.stdout)
    assert result["renders"] == 2 and all((r["width"], r["height"]) == (96, 64) for r in result["best"])
    second = max(result["best"], key=lambda r: r["seed"])
    meta = read_reverie_meta(second["path"])
    assert meta["spec"]["profile"] == profile and meta["engine"] == "tiny"
    assert meta["spec"]["source"]["image_sha"] == file_sha256(source)
    info = json.loads(run_cli("lineage", str(second["id"]), "--json", home=home).stdout)
    assert info["edit"]["instruction"] == "make it night" and info["edit"]["source_sha"] == file_sha256(source)
    again = run_cli("reproduce", second["path"], home=home)
    assert again.returncode == 0 and "match: pixels identical" in again.stdout, again.stdout + again.stderr
