"""Issue 23's claim, proved: a family is a profile entry, an adapter, a workflow table entry and a
tiny builder, and nothing else.

The test defines an eighth family entirely here, through the four public registration points only
(it reuses diffusers' ZImagePipeline under a new family name), then renders it through
`Studio.make` on the tiny engine, reproduces the pixels from the PNG, and checks that the ComfyUI
workflow, the importers, the dreamer and `reverie models` all know it from its entries alone.
"""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from reverie.cli import app
from reverie.orchestrator.studio import Studio
from reverie.profiles import FAMILIES, PROFILES, Family, Profile, get_profile, guess_profile, register_family, register_profile
from reverie.render import comfy_workflow, families, tiny
from reverie.render.comfy_workflow import ComfyFamily, register_workflow
from reverie.render.families import FamilyAdapter, register_adapter
from reverie.render.tiny import build_tiny_pipeline, register_tiny
from reverie.store.pngmeta import read_metadata

cli = CliRunner()

ZETA = Family(name="zeta", label="Zeta", pipeline="ZImagePipeline", flow=True, cfg_offset=1.0, latent="flux1-16ch",
              prompt_advice="Zeta wants the light source named in the first sentence.")
ZETA_TURBO = Profile(name="zeta-turbo", family="zeta", pipeline="ZImagePipeline", repo_id="example/Zeta-Turbo",
                     steps=3, guidance=0.0, sampler="euler", shift=2.0, multiple=16, max_side=1024,
                     prompt_style="natural", negative=False, comfy_cfg=1.0,
                     comfy_files={"unet": "zeta_turbo.safetensors", "clip": "qwen_3_4b.safetensors",
                                  "vae": "ae.safetensors"},
                     aliases=("zeta",), source="tests/test_eighth_family.py")


class ZetaAdapter(FamilyAdapter):
    family = "zeta"
    img2img_pipeline = "ZImageImg2ImgPipeline"

    def encode(self, pipe, prompt, negative, cfg, clip_skip, device):
        pos, neg = pipe.encode_prompt(prompt=prompt, device=device, do_classifier_free_guidance=cfg,
                                      negative_prompt=negative or None)
        return {"prompt_embeds": [pos[0]], **({"negative_prompt_embeds": [neg[0]]} if cfg else {})}


@pytest.fixture
def zeta():
    """The eighth family, registered for one test; every table is as it was afterwards."""
    tables = [FAMILIES, PROFILES, families.ADAPTERS, comfy_workflow.WORKFLOWS, comfy_workflow.FAMILY_FILES,
              tiny.TINY_FAMILIES]
    saved = [dict(t) for t in tables]
    register_family(ZETA)
    register_profile(ZETA_TURBO)
    register_adapter(ZetaAdapter())
    register_workflow("zeta", ComfyFamily("unet", "EmptySD3LatentImage", "simple", clip_type="lumina2",
                                          shift_node="ModelSamplingAuraFlow"), files={"weight_dtype": "default"})
    register_tiny("zeta", "tiny-zeta-v1", build_tiny_pipeline)
    try:
        yield ZETA_TURBO
    finally:
        for table, before in zip(tables, saved):
            table.clear()
            table.update(before)


def test_an_eighth_family_renders_and_reproduces_through_the_four_seams_alone(zeta, home):
    studio = Studio(home, engine="tiny", profile="zeta-turbo", scorer="heuristic")
    try:
        result = studio.make("a fox in the rain", n=2, rounds=1, megapixels=0.01, seed=7)
        engine = studio.engine_for(zeta, lambda e: None)
        assert type(engine.pipe).__name__ == "ZImagePipeline" and isinstance(engine.adapter, ZetaAdapter)
    finally:
        studio.close()
    assert len(result.renders) == 2
    for render in result.renders:
        png = home / render.path
        chunks = read_metadata(png)
        meta = json.loads(chunks["reverie"])
        assert meta["spec"]["profile"] == "zeta-turbo" and meta["spec"]["steps"] == 3 and meta["spec"]["shift"] == 2.0
        assert re.search(r"Model: ([^,]+)", chunks["parameters"]).group(1) == "tiny-zeta-v1 (random weights)"
        out = cli.invoke(app, ["reproduce", str(png), "--home", str(home)])
        assert out.exit_code == 0, out.output
        assert "match: pixels identical" in out.output


def test_the_rest_of_reverie_knows_the_eighth_family_from_its_entries(zeta, tmp_path, monkeypatch):
    from reverie.agents.dreamer import system_prompt
    from reverie.render.comfy_workflow import build_workflow, comfy_files
    from reverie.render.comfyui import profile_spec

    workflow = build_workflow(profile_spec(zeta), zeta, comfy_files(zeta))
    nodes = {n["class_type"]: n["inputs"] for n in workflow.values()}
    assert nodes["UNETLoader"]["unet_name"] == "zeta_turbo.safetensors"
    assert nodes["ModelSamplingAuraFlow"]["shift"] == 2.0 and nodes["KSampler"]["cfg"] == 1.0
    assert guess_profile("zeta_turbo_finetune_fp8.safetensors") == "zeta-turbo"
    assert ZETA.prompt_advice in system_prompt(zeta)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    out = cli.invoke(app, ["models", "--json", "--home", str(tmp_path / "home")])
    assert out.exit_code == 0, out.output
    row = next(r for r in json.loads(out.output) if r["name"] == "zeta-turbo")
    assert (row["family"], row["repo"], row["pull"]) == ("zeta", "example/Zeta-Turbo", "reverie models pull zeta-turbo")


def test_registration_refuses_a_family_it_does_not_know():
    from reverie.types import ReverieError

    with pytest.raises(ReverieError, match="register_family it first"):
        register_profile(Profile(name="orphan", family="no-such-family", pipeline="X", repo_id="", steps=1,
                                 guidance=1.0, sampler="euler", shift=None, multiple=8, max_side=512,
                                 prompt_style="natural", negative=False))
    assert "orphan" not in PROFILES
    with pytest.raises(ReverieError):
        get_profile("zeta-turbo")  # the fixture's registration did not outlive its test


@pytest.mark.parametrize("model, profile", [
    ("zimage_custom_merge.safetensors", "z-image-turbo"), ("fluxSchnellMerge_v2", "flux1-schnell"),
    ("myFluxDevFinetune", "flux1-dev"), ("ponyRealism_v21XL", "pony"), ("juggernautXL_v9", "sdxl"),
    ("FLUX.2-klein-9B-custom", "flux2-klein-4b"), ("chroma-unlocked-v50", "chroma1-hd"),
    ("dreamshaper_8", "sd15"),
])
def test_another_tools_model_name_finds_its_profile_through_the_profiles_aliases(model, profile):
    # The importers' keyword chain moved into the profiles (Profile.aliases): the same answers as before
    # for the old families, and the new families found by their own words.
    from reverie.store.importers import parse_a1111

    assert guess_profile(model) == profile
    text = f"a fox\nSteps: 4, Sampler: Euler, CFG scale: 1, Seed: 1, Size: 64x64, Model: {model}"
    assert parse_a1111(text).spec.profile == profile
