"""The ComfyUI engine against a scripted server speaking ComfyUI's protocol on loopback."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reverie.render.comfyui import ComfyUIEngine
from reverie.render.registry import make_engine
from reverie.types import Control, Notice, RenderSpec, ReverieError, TypedEvent
from tests.comfy_server import NODES, ComfyServer, fake_render
from tests.conftest import run_cli


def zspec(seed: int = 7, **kw) -> RenderSpec:
    base = dict(prompt="a red fox in the rain, 35mm photo", seed=seed, width=64, height=48, steps=9, guidance=0.0,
                profile="z-image-turbo", sampler="euler", shift=3.0)
    return RenderSpec(**{**base, **kw})


def engine_for(*servers: ComfyServer, **kw) -> ComfyUIEngine:
    kw.setdefault("poll_interval", 0.2)
    return ComfyUIEngine([s.url for s in servers], **kw)


def same_pixels(image: Image.Image, seed: int) -> bool:
    return np.array_equal(np.asarray(image), np.asarray(fake_render(seed, *image.size)))


@pytest.fixture
def server():
    with ComfyServer() as s:
        yield s


ZIMAGE_LOADERS = {
    "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "z_image_turbo_bf16.safetensors", "weight_dtype": "default"}},
    "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": "qwen_3_4b.safetensors", "type": "lumina2"}},
    "3": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
}


def test_zimage_workflow_is_exactly_the_comfyui_template(server):
    events = []
    [out] = engine_for(server).render([zspec(seed=7)], events.append)
    assert server.workflows == [{
        **ZIMAGE_LOADERS,
        "4": {"class_type": "ModelSamplingAuraFlow", "inputs": {"model": ["1", 0], "shift": 3.0}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox in the rain, 35mm photo", "clip": ["2", 0]}},
        "6": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["5", 0]}},
        "7": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 1}},
        "8": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "seed": 7, "steps": 9, "cfg": 1.0,
                                                   "sampler_name": "euler", "scheduler": "simple", "positive": ["5", 0],
                                                   "negative": ["6", 0], "latent_image": ["7", 0], "denoise": 1.0}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["3", 0]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "reverie"}},
    }]
    assert out.error == "" and out.engine == "comfyui" and out.spec == zspec(seed=7)
    assert out.image.size == (64, 48) and same_pixels(out.image, 7)
    steps = [e.data["step"] for e in events if e.kind == "engine_progress"]
    assert steps == list(range(1, 10))
    assert [e.data["seed"] for e in events if e.kind == "engine_image"] == [7]


def test_blind_steps_use_two_advanced_samplers_on_zeroed_conditioning(server):
    spec = zspec(seed=11, blind_steps=2, shift=6.0, sampler="res_multistep")
    [out] = engine_for(server).render([spec])
    common = {"steps": 9, "cfg": 1.0, "sampler_name": "res_multistep", "scheduler": "simple", "noise_seed": 11,
              "model": ["4", 0], "negative": ["6", 0]}
    assert server.workflows == [{
        **ZIMAGE_LOADERS,
        "4": {"class_type": "ModelSamplingAuraFlow", "inputs": {"model": ["1", 0], "shift": 6.0}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": spec.prompt, "clip": ["2", 0]}},
        "6": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["5", 0]}},
        "7": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 1}},
        "8": {"class_type": "KSamplerAdvanced", "inputs": {**common, "add_noise": "enable", "positive": ["6", 0],
                                                           "latent_image": ["7", 0], "start_at_step": 0, "end_at_step": 2,
                                                           "return_with_leftover_noise": "enable"}},
        "9": {"class_type": "KSamplerAdvanced", "inputs": {**common, "add_noise": "disable", "positive": ["5", 0],
                                                           "latent_image": ["8", 0], "start_at_step": 2, "end_at_step": 9,
                                                           "return_with_leftover_noise": "disable"}},
        "10": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["3", 0]}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "reverie"}},
    }]
    assert same_pixels(out.image, 11)


def test_sdxl_uses_the_checkpoint_and_a_real_negative(server):
    spec = RenderSpec(prompt="masterpiece, fox, rain", negative="lowres, blurry", seed=3, width=64, height=64, steps=40,
                      guidance=6.0, profile="sdxl", sampler="dpmpp_2m_karras")
    [out] = engine_for(server, profile="sdxl").render([spec])
    assert server.workflows == [{
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "masterpiece, fox, rain", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "lowres, blurry", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 3, "steps": 40, "cfg": 6.0,
                                                   "sampler_name": "dpmpp_2m", "scheduler": "karras",
                                                   "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "reverie"}},
    }]
    assert same_pixels(out.image, 3)


def test_pony_clip_skip_and_flux_dev_guidance(server):
    pony = RenderSpec(prompt="score_9, fox", negative="score_4", seed=1, width=64, height=64, steps=4, guidance=7.0,
                      profile="pony", sampler="euler_ancestral")
    flux = RenderSpec(prompt="a fox", seed=2, width=64, height=64, steps=4, guidance=3.5, profile="flux1-dev")
    engine_for(server, profile="pony").render([pony])
    engine_for(server, profile="flux1-dev", files={"t5": "t5xxl_fp16.safetensors"}).render([flux])
    pony_wf, flux_wf = server.workflows
    assert pony_wf["2"] == {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["1", 1], "stop_at_clip_layer": -2}}
    assert pony_wf["3"]["inputs"]["clip"] == ["2", 0] and pony_wf["4"]["inputs"] == {"text": "score_4", "clip": ["2", 0]}
    assert pony_wf["6"]["inputs"]["sampler_name"] == "euler_ancestral" and pony_wf["6"]["inputs"]["scheduler"] == "normal"
    assert pony_wf["6"]["inputs"]["cfg"] == 7.0
    assert flux_wf["2"] == {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "clip_l.safetensors",
                                                                       "clip_name2": "t5xxl_fp16.safetensors", "type": "flux"}}
    assert flux_wf["5"] == {"class_type": "FluxGuidance", "inputs": {"conditioning": ["4", 0], "guidance": 3.5}}
    sampler = next(n for n in flux_wf.values() if n["class_type"] == "KSampler")["inputs"]
    assert sampler["cfg"] == 1.0 and sampler["positive"] == ["5", 0]


def test_one_prompt_per_seed_queued_together_and_seeds_reproduce_alone(server):
    seeds = [5, 6, 7, 8, 9, 123456789]
    engine = engine_for(server)  # a lone server gets the whole call queued at once
    outs = engine.render([zspec(seed=s) for s in seeds])
    assert [o.spec.seed for o in outs] == seeds
    assert sorted(wf["8"]["inputs"]["seed"] for wf in server.workflows) == sorted(seeds)
    assert all(same_pixels(o.image, o.spec.seed) for o in outs)
    [alone] = engine.render([zspec(seed=8)])
    assert np.array_equal(np.asarray(alone.image), np.asarray(outs[3].image))


def test_control_images_are_uploaded_and_wired(server, tmp_path):
    ref = tmp_path / "edges.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(ref)
    control = Control(kind="img2img", image_sha="ab" * 32, image_path=str(ref), strength=0.6)
    canny = Control(kind="canny", image_sha="cd" * 32, image_path=str(ref), strength=0.8)
    engine = engine_for(server)
    img2img, zcanny = engine.render([zspec(seed=1, control=control), zspec(seed=2, control=canny)])
    assert sorted(server.uploads) == [f"reverie_{'ab' * 8}_64x48.png", f"reverie_{'cd' * 8}_64x48.png"]
    with Image.open(io.BytesIO(server.uploads[f"reverie_{'ab' * 8}_64x48.png"])) as im:
        assert im.size == (64, 48)  # resized to the render size before upload
    wf1, wf2 = server.workflows
    by_class = lambda wf: {n["class_type"]: (i, n["inputs"]) for i, n in wf.items()}  # noqa: E731
    c1, c2 = by_class(wf1), by_class(wf2)
    load_id = c1["LoadImage"][0]
    assert c1["VAEEncode"][1] == {"pixels": [load_id, 0], "vae": ["3", 0]}
    assert c1["KSampler"][1]["denoise"] == 0.6 and c1["KSampler"][1]["latent_image"] == [c1["VAEEncode"][0], 0]
    assert c2["ModelPatchLoader"][1] == {"name": "Z-Image-Turbo-Fun-Controlnet-Union.safetensors"}
    patched_id, patched = c2["QwenImageDiffsynthControlnet"]
    assert patched["strength"] == 0.8 and patched["image"] == [c2["LoadImage"][0], 0]
    # As ComfyUI's template wires it: the patch on the loaded model, the shift after it.
    shifted_id, shifted = c2["ModelSamplingAuraFlow"]
    assert patched["model"] == [c2["UNETLoader"][0], 0] and shifted["model"] == [patched_id, 0]
    assert c2["KSampler"][1]["model"] == [shifted_id, 0]
    assert img2img.image.size == (64, 48) and zcanny.image.size == (64, 48)

    sdxl = RenderSpec(prompt="fox", negative="blurry", seed=4, width=64, height=64, steps=4, guidance=6.0,
                      profile="sdxl", sampler="dpmpp_2m_karras", control=Control("depth", "ef" * 32, str(ref), 0.5))
    engine_for(server, profile="sdxl").render([sdxl])
    c3 = by_class(server.workflows[-1])
    applied_id, applied = c3["ControlNetApplyAdvanced"]
    assert c3["ControlNetLoader"][1] == {"control_net_name": "controlnet-depth-sdxl-1.0.safetensors"}
    assert applied["strength"] == 0.5 and applied["vae"] == ["1", 2]
    assert c3["KSampler"][1]["positive"] == [applied_id, 0] and c3["KSampler"][1]["negative"] == [applied_id, 1]


def test_missing_files_are_named_all_at_once_before_anything_is_queued():
    # A FLUX user without clip_l and t5xxl learns about both, and the fix for each, in one line.
    has = {"unet_name": ["flux1-dev.safetensors"], "vae_name": ["ae.safetensors"], "clip_name": ["qwen_3_4b.safetensors"]}
    spec = RenderSpec(prompt="a fox", seed=2, width=64, height=64, steps=4, guidance=3.5, profile="flux1-dev")
    with ComfyServer(models=has) as s:
        with pytest.raises(ReverieError) as e:
            engine_for(s, profile="flux1-dev").render([spec, spec])
        assert s.workflows == [] and s.gets == ["/system_stats", "/object_info"]
    assert str(e.value) == (
        f"ComfyUI at {s.url} cannot run flux1-dev: it lacks "
        "clip_l file clip_l.safetensors (put it in models/text_encoders or pass --comfy-file clip_l=NAME); "
        "t5 file t5xxl_fp8_e4m3fn.safetensors (put it in models/text_encoders or pass --comfy-file t5=NAME)")


def test_missing_node_sampler_and_control_file_are_named_together(tmp_path):
    ref = tmp_path / "edges.png"
    Image.new("RGB", (32, 32)).save(ref)
    old = {k: v for k, v in NODES.items() if k != "ModelSamplingAuraFlow"}
    canny = Control(kind="canny", image_sha="cd" * 32, image_path=str(ref), strength=0.8)
    models = {"unet_name": ["z_image_turbo_bf16.safetensors"], "clip_name": ["qwen_3_4b.safetensors"],
              "vae_name": ["ae.safetensors"]}
    with ComfyServer(nodes=old, models=models, samplers=("euler", "dpmpp_2m")) as s:
        with pytest.raises(ReverieError) as e:
            engine_for(s).render([zspec(sampler="unipc"), zspec(control=canny)])
        assert s.workflows == [] and not s.uploads
    assert str(e.value) == (
        f"ComfyUI at {s.url} cannot run z-image-turbo: it lacks node ModelSamplingAuraFlow (update ComfyUI); "
        "sampler uni_pc (update ComfyUI); model_patch file "
        "Z-Image-Turbo-Fun-Controlnet-Union.safetensors (put it in models/model_patches or pass --comfy-file model_patch=NAME)")


def test_execution_errors_carry_comfyuis_own_reason():
    with ComfyServer(fail_seeds=(2,)) as s:
        outs = engine_for(s).render([zspec(seed=1), zspec(seed=2), zspec(seed=3)])
    assert [o.image is not None for o in outs] == [True, False, True]
    assert outs[1].error == (f"ComfyUI at {s.url} failed in KSampler (node 1): torch.OutOfMemoryError: "
                             "Allocation on device would exceed allowed memory")


def test_pool_spreads_work_and_a_dead_server_work_moves_to_the_survivor():
    seeds = list(range(100, 110))
    with ComfyServer(die_at=2, step_delay=0.002) as doomed, ComfyServer(step_delay=0.002) as survivor:
        events = []
        outs = engine_for(doomed, survivor, queue_depth=2).render([zspec(seed=s) for s in seeds], events.append)
        assert doomed.dead
    assert [o.spec.seed for o in outs] == seeds
    assert all(o.error == "" and same_pixels(o.image, o.spec.seed) for o in outs)
    images = [e.data for e in events if e.kind == "engine_image"]
    assert sorted(d["seed"] for d in images) == seeds  # each spec delivered exactly once
    from_doomed = {d["seed"] for d in images if d["server"] == doomed.url}
    from_survivor = [d["seed"] for d in images if d["server"] == survivor.url]
    assert len(doomed.executed) == 1 and from_doomed <= set(doomed.executed)
    assert sorted(survivor.executed) == sorted(from_survivor)  # the survivor rendered each of its specs once
    assert set(from_survivor) == set(seeds) - from_doomed
    notices = [e.message for e in events if isinstance(e, Notice)]
    assert len(notices) == 1 and doomed.url in notices[0]
    assert [e for e in events if not isinstance(e, TypedEvent)] == []


def test_a_server_that_stops_answering_does_not_hang_the_batch():
    with ComfyServer(hang_at=1) as hung, ComfyServer() as ok:
        outs = engine_for(hung, ok, timeout=1.0, queue_depth=2).render([zspec(seed=s) for s in (1, 2, 3)])
        assert hung.hung and hung.executed == []
    assert [o.spec.seed for o in outs] == [1, 2, 3] and sorted(ok.executed) == [1, 2, 3]


def test_all_servers_dead_names_them_and_the_fix():
    a, b = ComfyServer(), ComfyServer()
    a.close(), b.close()
    with pytest.raises(ReverieError) as e:
        engine_for(a, b, timeout=2.0).render([zspec()])
    message = str(e.value)
    assert a.url in message and b.url in message and message.endswith("start ComfyUI or pass --comfy-url")
    assert "0 of 1 images were rendered" in message

    events = []
    with ComfyServer(die_at=2) as lone:
        with pytest.raises(ReverieError) as e:
            engine_for(lone, queue_depth=1).render([zspec(seed=s) for s in (1, 2, 3)], events.append)
    assert "1 of 3 images were rendered" in str(e.value)
    # No other server to move to: the error line alone speaks, no "move to the other servers" notice.
    assert not [e for e in events if e.kind == "notice"]


def test_server_list_from_argument_or_environment(monkeypatch):
    monkeypatch.setenv("REVERIE_COMFYUI_URL", "http://gpu1:8188, gpu2:8188/")
    assert ComfyUIEngine().servers == ["http://gpu1:8188", "http://gpu2:8188"]
    engine = make_engine("comfyui", servers=["http://a:1", "http://a:1", "http://b:2"], profile="sd15",
                         files={"checkpoint": "mine.safetensors"})
    assert engine.servers == ["http://a:1", "http://b:2"] and engine.files["checkpoint"] == "mine.safetensors"
    with pytest.raises(ReverieError, match="--comfy-url"):
        ComfyUIEngine("ftp://nope")


def test_cli_make_with_comfyui_end_to_end(server, tmp_path):
    home = tmp_path / "home"
    proc = run_cli("make", "a fox in the rain", "--n", "2", "--rounds", "1", "--seed", "40", "--megapixels", "0.05",
                   "--engine", "comfyui", "--comfy-url", server.url, "--json", home=home, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["renders"] == 2
    # Image workflows only: with no LLM the server's TextGenerate wrote the prompt first.
    renders = [wf for wf in server.workflows if any(n["class_type"] == "KSampler" for n in wf.values())]
    seeds = sorted(wf[next(i for i, n in wf.items() if n["class_type"] == "KSampler")]["inputs"]["seed"]
                   for wf in renders)
    assert sorted(b["seed"] for b in result["best"]) == seeds and len(seeds) == 2
    for best in result["best"]:
        assert best["scores"] is not None and best["scores"]["composite"] is not None
        path = Path(best["path"]) if Path(best["path"]).is_absolute() else home / best["path"]
        with Image.open(path) as im:
            assert im.size == (best["width"], best["height"])
            assert same_pixels(im.convert("RGB"), best["seed"])


@pytest.mark.slow
def test_cli_missing_comfy_file_prints_one_line(tmp_path):
    with ComfyServer(models={"ckpt_name": ["other.safetensors"]}) as s:
        proc = run_cli("make", "a fox", "--n", "1", "--rounds", "1", "--profile", "sdxl", "--comfy-url", s.url,
                       "--comfy-file", "checkpoint=missing_xl.safetensors", "--megapixels", "0.05",
                       home=tmp_path / "home", timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (f"error: ComfyUI at {s.url} cannot run sdxl: it lacks checkpoint file "
                                   "missing_xl.safetensors (put it in models/checkpoints or pass --comfy-file checkpoint=NAME)")


def test_z_image_guidance_maps_to_comfy_cfg_as_png_info_shows_it():
    """Z-Image's diffusers guidance 2.0 is CFG 3.0 (the family's offset), the number PNG Info prints
    and a ComfyUI user types; the default 0.0 stays the profile's CFG 1."""
    from reverie.profiles import get_profile
    from reverie.render.comfy_workflow import comfy_cfg

    profile = get_profile("z-image-turbo")
    assert comfy_cfg(zspec(seed=1), profile) == 1.0
    assert comfy_cfg(zspec(seed=1, guidance=2.0), profile) == 3.0 == profile.traits.cfg_scale(2.0)
    assert comfy_cfg(zspec(seed=1, guidance=-0.5), profile) == 1.0


def test_cli_png_records_comfy_files_worker_and_the_cfg_comfyui_ran(tmp_path):
    """--comfy-file goes into the spec (database and PNG), the server that rendered it into the
    PNG, and a FLUX render's PNG says the CFG 1 ComfyUI ran, not the 0.0 of its guidance."""
    import sqlite3

    from reverie.store.pngmeta import read_metadata

    models = {"ckpt_name": ["ponyDiffusionV6XL.safetensors", "OTHER.safetensors"],
              "unet_name": ["flux1-schnell.safetensors"], "clip_name": ["clip_l.safetensors", "t5xxl_fp8_e4m3fn.safetensors"],
              "vae_name": ["ae.safetensors"]}
    home = tmp_path / "home"
    with ComfyServer(models=models) as s:
        pony = run_cli("make", "a fox in the rain", "--profile", "pony", "--n", "1", "--rounds", "1", "--seed", "3",
                       "--megapixels", "0.05", "--comfy-url", s.url, "--comfy-file", "checkpoint=OTHER.safetensors",
                       "--scorer", "heuristic", "--json", home=home, timeout=120)
        flux = run_cli("make", "a fox in the rain", "--profile", "flux1-schnell", "--n", "1", "--rounds", "1", "--seed", "3",
                       "--megapixels", "0.05", "--comfy-url", s.url, "--scorer", "heuristic", "--json", home=home,
                       timeout=120)
        ran = [n["inputs"] for wf in s.workflows for n in wf.values() if n["class_type"] in ("KSampler", "CheckpointLoaderSimple")]
    assert pony.returncode == 0 and flux.returncode == 0, pony.stderr + flux.stderr
    assert {"ckpt_name": "OTHER.safetensors"} in ran and any(k.get("cfg") == 1.0 for k in ran)

    pony_png = json.loads(pony.stdout)["best"][0]["path"]
    text = read_metadata(pony_png)
    params, meta = text["parameters"], json.loads(text["reverie"])
    assert "Model: OTHER," in params and "Model files: checkpoint=OTHER.safetensors" in params
    assert meta["spec"]["model_files"] == {"checkpoint": "OTHER.safetensors"}
    assert f"Worker: {s.url} (ComfyUI {s.version})" in params and meta["worker"].startswith(s.url)
    conn = sqlite3.connect(home / "reverie.db")
    specs = [json.loads(r[0]) for r in conn.execute("select spec_json from renders")]
    conn.close()
    assert {"checkpoint": "OTHER.safetensors"} in [sp.get("model_files") for sp in specs]

    flux_params = read_metadata(json.loads(flux.stdout)["best"][0]["path"])["parameters"]
    assert "CFG scale: 1.0," in flux_params and "Distilled CFG Scale: 0.0" in flux_params

    # reproduce does not quietly swap in the profile's own weights
    again = run_cli("reproduce", pony_png, "--engine", "diffusers", home=home)
    assert again.returncode != 0 and "OTHER.safetensors" in again.stderr and "--model-path" in again.stderr
