"""The models people run now: each family renders on a tiny model of its own kind and reproduces.

One parametrised test over the families: `Studio.make` on the tiny engine (a random-weight model
of the profile's own family, built from config in code), two seeds, then `reverie reproduce` from
each PNG alone must give identical pixels, and PNG Info must name the model that really ran.
"""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from reverie.cli import app
from reverie.orchestrator.studio import Studio
from reverie.profiles import FAMILIES, PROFILES, get_profile
from reverie.render.resolution import parse_aspect, size_for
from reverie.render.tiny import TINY_FAMILIES
from reverie.store.pngmeta import read_metadata

cli = CliRunner()

LINEUP = ["flux2-klein-4b", "flux2-dev", "qwen-image", "z-image", "chroma1-hd", "sd3.5-large", "krea2"]


@pytest.fixture(scope="module")
def lineup_home(tmp_path_factory, tiny_models_dir):
    """One home for the module: each family's tiny model is built once and kept beside the tiny Z-Image."""
    home = tmp_path_factory.mktemp("lineup")
    (home / "models").symlink_to(tiny_models_dir, target_is_directory=True)
    return home


@pytest.mark.parametrize("name", LINEUP)
def test_each_family_renders_on_its_own_tiny_model_and_reproduces(name, lineup_home):
    profile = get_profile(name)
    studio = Studio(lineup_home, engine="tiny", profile=name, scorer="heuristic")
    try:
        result = studio.make(f"a fox in the rain, {name}", n=2, rounds=1, megapixels=0.01, seed=11, steps=2)
        engine = studio.engine_for(profile, lambda e: None)
        assert type(engine.pipe).__name__ == profile.pipeline == FAMILIES[profile.family].pipeline
    finally:
        studio.close()
    assert len(result.renders) == 2 and len({r.seed for r in result.renders}) == 2
    for render in result.renders:
        png = lineup_home / render.path
        chunks = read_metadata(png)
        meta = json.loads(chunks["reverie"])
        model = re.search(r"Model: ([^,]+)", chunks["parameters"]).group(1)
        # The model that really ran: the tiny model of the profile's family, never the real one's name.
        assert model == meta["model"] == f"{TINY_FAMILIES[profile.family][0]} (random weights)"
        assert profile.repo_id.split("/")[-1] not in model
        assert meta["spec"]["profile"] == name and meta["spec"]["width"] % profile.multiple == 0
        out = cli.invoke(app, ["reproduce", str(png), "--home", str(lineup_home)])
        assert out.exit_code == 0, out.output
        assert "match: pixels identical" in out.output


ASPECTS = ["1:1", "2:3", "3:2", "4:5", "16:9", "9:16", "21:9", "1:8", "8:1"]


@pytest.mark.parametrize("name", list(PROFILES))
@pytest.mark.parametrize("aspect", ASPECTS)
def test_the_calculator_gives_every_family_a_size_its_pipeline_takes(name, aspect):
    profile = get_profile(name)
    family = FAMILIES[profile.family]
    # A profile keeps to its family's rules (it may be stricter, never looser).
    assert profile.multiple % family.multiple == 0 and profile.max_side <= family.max_side
    for megapixels in (0.01, 0.25, 1.0, 1.7, 4.0):
        w, h = size_for(aspect, megapixels, profile.multiple, profile.max_side, buckets=family.buckets)
        assert w % profile.multiple == 0 and h % profile.multiple == 0, (w, h)
        assert profile.multiple <= w <= profile.max_side and profile.multiple <= h <= profile.max_side
        if megapixels >= 0.25:  # big enough for rounding not to bend the shape
            assert w / h == pytest.approx(parse_aspect(aspect), rel=0.15) or max(w, h) == profile.max_side


def test_published_sizes_are_taken_as_they_are():
    qwen = FAMILIES["qwen-image"]
    assert size_for("1:1", 1.7, 16, 2048, buckets=qwen.buckets) == (1328, 1328)
    assert size_for("16:9", 1.5, 16, 2048, buckets=qwen.buckets) == (1664, 928)
    assert size_for("1:1", 1.0, 16, 2048, buckets=qwen.buckets) == (1024, 1024)  # far from any bucket's pixels
    assert size_for("3:2", 1.0, 16, 2048, buckets=FAMILIES["z-image"].buckets) == (1248, 832)


def test_models_lists_every_profile_with_its_pull_command_and_gated_repos_say_how(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    home = tmp_path / "home"
    out = cli.invoke(app, ["models", "--json", "--home", str(home)])
    assert out.exit_code == 0, out.output
    rows = {r["name"]: r for r in json.loads(out.output)}
    for name in LINEUP:
        p = get_profile(name)
        row = rows[name]
        assert (row["family"], row["repo"], row["present"]) == (p.family, p.repo_id, False)
        assert row["pull"] == f"reverie models pull {name}" and row["source"]
    assert rows["flux2-dev"]["gated"] and not rows["flux2-klein-4b"]["gated"]
    table = cli.invoke(app, ["models", "--home", str(home)])
    lines = table.output.splitlines()
    at = lines.index("flux2-dev:")  # the page's address whole on the next line, the way below the table
    assert lines[at + 1].strip() == "https://huggingface.co/black-forest-labs/FLUX.2-dev"
    assert any(line.startswith("gated:") and "hf auth login" in line for line in lines[:at])
    pull = cli.invoke(app, ["models", "pull", "flux2-dev", "--home", str(home)])
    assert pull.exit_code == 2 and "is gated" in pull.output and "HF_HUB_OFFLINE" in pull.output


@pytest.mark.parametrize("name", LINEUP)
def test_missing_weights_are_one_line_naming_the_pull_command(name, tmp_path, monkeypatch):
    from reverie.render.weights import resolve_weights
    from reverie.types import ReverieError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ReverieError) as e:
        resolve_weights(get_profile(name), None)
    assert "\n" not in str(e.value) and f"reverie models pull {name}" in str(e.value)
    assert ("hf auth login" in str(e.value)) == get_profile(name).gated


# -- ComfyUI: each family's graph against ComfyUI's own template, and the preflight --------------------
# Template nodes that only draw the UI, pick sizes, or write prompts and switch LoRAs inside ComfyUI.
UI_ONLY = {"MarkdownNote", "Note", "PreviewImage", "PrimitiveInt", "PrimitiveFloat", "PrimitiveBoolean",
           "PrimitiveStringMultiline", "ComfySwitchNode", "ResolutionSelector", "StringConcatenate", "TextGenerate",
           "PreviewAny", "LoraLoaderModelOnly", "SaveImageAdvanced", "SaveImage"}
# FLUX.2's and Chroma's templates sample with SamplerCustomAdvanced and a guider; reverie uses the one
# KSampler graph every family shares (blind steps and img2img work the same way everywhere).
CUSTOM_SAMPLING = {"SamplerCustomAdvanced", "RandomNoise", "KSamplerSelect", "CFGGuider", "BasicGuider",
                   "BasicScheduler", "Flux2Scheduler"}
# profile -> (template, nodes only the template has, nodes only reverie has)
PARITY = {
    "z-image": ("image_z_image.json", set(), set()),
    "qwen-image": ("image_qwen_Image_2512.json", set(), set()),
    "sd3.5-large": ("sd3.5_simple_example.json", set(), set()),
    "krea2": ("image_krea2_turbo_t2i.json", set(), set()),
    "chroma1-hd": ("image_chroma_text_to_image.json", CUSTOM_SAMPLING - {"Flux2Scheduler", "BasicGuider"}, {"KSampler"}),
    "flux2-dev": ("image_flux2_text_to_image.json", CUSTOM_SAMPLING - {"CFGGuider", "BasicScheduler"},
                  {"KSampler", "ConditioningZeroOut"}),
    "flux2-klein-4b": ("image_flux2_klein_text_to_image.json", CUSTOM_SAMPLING - {"BasicGuider", "BasicScheduler"},
                       {"KSampler"}),
}


def template(name: str) -> dict[str, list]:
    """class_type -> widget values of a ComfyUI template (subgraphs included; a later node of a type wins)."""
    from importlib.resources import files

    templates = pytest.importorskip("comfyui_workflow_templates_json")
    t = json.loads((files(templates) / "templates" / name).read_text())
    subgraphs = (t.get("definitions") or {}).get("subgraphs", [])
    nodes = list(t["nodes"]) + [n for sg in subgraphs for n in sg["nodes"]]
    skip = {sg["id"] for sg in subgraphs} | UI_ONLY
    return {n["type"]: n.get("widgets_values") or [] for n in nodes if n["type"] not in skip}


@pytest.mark.parametrize("name", list(PARITY))
def test_comfy_workflow_matches_the_official_template_node_for_node(name):
    from reverie.render.comfy_workflow import build_workflow, comfy_files
    from reverie.render.comfyui import profile_spec

    profile = get_profile(name)
    template_name, theirs_only, ours_only = PARITY[name]
    theirs = template(template_name)
    files = comfy_files(profile)
    ours = {n["class_type"]: n["inputs"] for n in build_workflow(profile_spec(profile), profile, files).values()}
    assert set(theirs) - set(ours) == theirs_only and set(ours) - set(theirs) - {"SaveImage"} == ours_only
    # The same files and loader types as the template.
    if "UNETLoader" in theirs:
        assert theirs["UNETLoader"][0] == ours["UNETLoader"]["unet_name"]
        assert theirs["CLIPLoader"][:2] == [ours["CLIPLoader"]["clip_name"], ours["CLIPLoader"]["type"]]
        assert theirs["VAELoader"] == [ours["VAELoader"]["vae_name"]]
    else:
        assert theirs["CheckpointLoaderSimple"] == [ours["CheckpointLoaderSimple"]["ckpt_name"]]
    for node in ("ModelSamplingAuraFlow", "FluxGuidance"):
        if node in theirs:
            key = "shift" if node.startswith("Model") else "guidance"
            assert theirs[node][0] == pytest.approx(ours[node][key])
    if "T5TokenizerOptions" in theirs:
        assert theirs["T5TokenizerOptions"] == [ours["T5TokenizerOptions"]["min_padding"],
                                                ours["T5TokenizerOptions"]["min_length"]]
    latent = next(k for k in theirs if k.startswith("Empty"))
    assert latent in ours and ours[latent]["batch_size"] == 1
    k = ours["KSampler"]
    if "KSampler" in theirs:  # seed, control, steps, cfg, sampler, scheduler, denoise; steps and CFG are named in docs
        _, _, steps, cfg, sampler, scheduler, denoise = theirs["KSampler"]
        if name == "z-image":  # Z-Image's templates sample with res_multistep, which diffusers lacks: reverie keeps euler
            assert (sampler, k["sampler_name"]) == ("res_multistep", "euler")
            sampler = k["sampler_name"]
        assert (sampler, scheduler, denoise) == (k["sampler_name"], k["scheduler"], k["denoise"])
    else:
        assert theirs["KSamplerSelect"] == [k["sampler_name"]]
        if "BasicScheduler" in theirs:
            assert theirs["BasicScheduler"][0] == k["scheduler"]


def test_the_preflight_names_each_familys_files(tmp_path):
    from reverie.render.comfy_preflight import missing
    from reverie.render.comfy_workflow import build_workflow, comfy_files
    from reverie.render.comfyui import ComfyClient, profile_spec
    from tests.comfy_server import ComfyServer

    wanted: dict[str, list[str]] = {}
    for name in LINEUP:
        for key, value in comfy_files(get_profile(name)).items():
            folder = {"unet": "unet_name", "clip": "clip_name", "vae": "vae_name", "checkpoint": "ckpt_name"}.get(key)
            if folder:
                wanted.setdefault(folder, []).append(value)
    with ComfyServer(models={}) as bare, ComfyServer(models=wanted) as ready:
        bare_info, ready_info = ComfyClient(bare.url, 10).server_info(), ComfyClient(ready.url, 10).server_info()
    for name in LINEUP:
        profile = get_profile(name)
        files = comfy_files(profile)
        workflow = build_workflow(profile_spec(profile), profile, files)
        assert missing(ready_info.nodes, [workflow], files) == []
        lacks = missing(bare_info.nodes, [workflow], files)
        for key in ("unet", "clip", "vae", "checkpoint"):
            if key in files:
                assert any(files[key] in item and f"--comfy-file {key}=NAME" in item for item in lacks), (name, lacks)


@pytest.mark.parametrize("name", LINEUP)
def test_the_dreamer_and_the_formula_write_in_the_familys_style(name):
    from reverie.agents.dreamer import finish_prompt, system_prompt
    from reverie.agents.formula import expand_formula

    profile = get_profile(name)
    family = FAMILIES[profile.family]
    system = system_prompt(profile)
    assert profile.prompt_style == "natural" and "one flowing paragraph" in system.lower()
    assert family.prompt_advice and family.prompt_advice in system
    assert ("Chinese" in system) == family.reads_chinese
    expansion = expand_formula('a bakery storefront with a sign that reads "FRESH BREAD"', profile, seed=3)
    assert "," in expansion.prompt and expansion.prompt.count(". ") >= 3  # sentences, not tags
    assert ('lettered clearly' in expansion.prompt) == family.text_in_images
    # Models that run real CFG keep their authors' negative prompt; the others get none.
    assert expansion.negative == (profile.default_negative if profile.negative else "")
    assert finish_prompt(profile, "a  paragraph", "ignored")[1] == expansion.negative


def test_qwen_image_is_told_to_spell_out_text():
    from reverie.agents.dreamer import system_prompt

    system = system_prompt(get_profile("qwen-image"))
    assert "text in images" in system and "double quotes" in system


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name", LINEUP)
def test_reverie_make_on_the_tiny_engine_and_reproduce_through_the_console_script(name, home):
    """The command a user types, at the profile's own step count (slow: up to 50 steps with CFG)."""
    from tests.conftest import run_cli

    made = run_cli("make", "a lighthouse at dusk", "--profile", name, "--engine", "tiny", "--n", "2", "--rounds", "1",
                   "--megapixels", "0.01", "--seed", "5", "--json", home=home)
    assert made.returncode == 0, made.stderr
    result = json.loads(made.stdout)
    # Two renders; the best list may keep one where random weights draw two seeds alike (dedupe).
    assert result["renders"] == 2 and result["best"]
    for best in result["best"]:
        again = run_cli("reproduce", str(home / best["path"]), home=home)
        assert again.returncode == 0 and "match: pixels identical" in again.stdout, again.stdout + again.stderr


@pytest.mark.parametrize("name", LINEUP)
def test_each_adapter_caches_the_prompt_and_honours_blind_steps_noise_and_img2img(name, lineup_home, tmp_path):
    import numpy as np
    from PIL import Image

    from reverie.render.tiny import TinyEngine
    from reverie.types import Control, RenderSpec, ReverieError

    profile = get_profile(name)
    engine = TinyEngine(models_dir=lineup_home / "models", profile=name, batch_size=2)
    base = RenderSpec(prompt="a red fox in the snow", negative="blurry", seed=1, width=64, height=48, steps=2,
                      guidance=profile.guidance, profile=name, sampler="euler", shift=profile.shift)

    def px(spec):
        return np.asarray(engine.render([spec])[0].image, dtype=np.int16)

    try:
        pair = engine.render([base, base.with_(seed=2)])
        assert engine.encoder_calls == 1  # one encoding of the prompt for both seeds
        assert len(pair) == 2
        for changed in (base.with_(blind_steps=1), base.with_(embed_noise=0.3)):
            assert np.abs(px(changed) - px(base)).mean() > 0.01, changed
        ref = tmp_path / "ref.png"
        Image.fromarray((np.indices((48, 64)).sum(0) % 2 * 255).astype(np.uint8)).convert("RGB").save(ref)
        img2img = base.with_(control=Control("img2img", "0" * 64, str(ref), 0.6))
        adapter = engine.adapter
        if adapter.img2img_refusal:
            with pytest.raises(ReverieError) as e:
                engine.render([img2img])
            assert "\n" not in str(e.value) and "img2img" in str(e.value)
        else:
            assert np.abs(px(img2img) - px(base)).mean() > 0.01
    finally:
        engine.close()
