"""The A1111 API, replayed with the request bodies Open WebUI and SillyTavern send (taken from
their source: Open WebUI's backend images router, SillyTavern's stable-diffusion extension and
its server proxy), parsed the way they parse the answer."""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
from PIL import Image

from tests.serve_helpers import ThreadServer


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_models_dir):
    home = tmp_path_factory.mktemp("a1111") / "home"
    home.mkdir()
    (home / "models").symlink_to(tiny_models_dir, target_is_directory=True)
    with ThreadServer(home) as s:
        yield s


def png(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert image.format == "PNG"
    return image


def test_open_webui_lists_sets_the_model_and_gets_images_with_info(server):
    client = httpx.Client(base_url=server.url, timeout=300, headers={"authorization": ""})
    # get_image_model / set_image_model: read the options, post them back with the checkpoint changed.
    options = client.get("/sdapi/v1/options").json()
    assert options["sd_model_checkpoint"] == "z-image-turbo"
    models = client.get("/sdapi/v1/sd-models").json()
    assert {"title", "model_name"} <= set(models[0]) and "z-image-turbo" in [m["title"] for m in models]
    options["sd_model_checkpoint"] = "z-image-turbo"
    assert client.post("/sdapi/v1/options", json=options).status_code == 200
    # image_generations, engine automatic1111: prompt, batch_size, width, height (+ steps, negative_prompt).
    res = client.post("/sdapi/v1/txt2img", json={"prompt": "a lighthouse at dusk", "batch_size": 2, "width": 128,
                                                 "height": 128, "steps": 8, "negative_prompt": "blurry"})
    assert res.status_code == 200, res.text
    res = res.json()
    assert len(res["images"]) == 2 and all(png(image).size == (128, 128) for image in res["images"])
    info = json.loads(res["info"])  # stored by Open WebUI as the file's metadata
    assert info["prompt"] == "a lighthouse at dusk" and len(info["all_seeds"]) == 2
    assert info["reverie"]["mode"] == "idea" and len(info["reverie"]["why"]) == 2
    # The idea went through the loop: what was rendered is the expanded prompt, not the idea.
    assert all(p != "a lighthouse at dusk" for p in info["all_prompts"])
    assert all(text.splitlines()[-1].startswith("Steps: ") for text in info["infotexts"])


SILLYTAVERN_BODY = {  # getSdRequestBody() + generateAutoImage(), forwarded as-is by /api/sd/generate
    "url": "http://127.0.0.1:7860", "auth": "user:very-secret-pass",
    "prompt": "Seraphina, silver hair, forest glade, soft light", "negative_prompt": "lowres, bad anatomy",
    "sampler_name": "Euler a", "steps": 2, "cfg_scale": 7, "width": 128, "height": 128,
    "restore_faces": False, "enable_hr": False, "hr_upscaler": "Latent", "hr_scale": 2,
    "denoising_strength": 0.7, "hr_second_pass_steps": 0, "seed": 1234, "clip_skip": 1,
    "override_settings": {"CLIP_stop_at_last_layers": 1, "sd_vae": "Automatic"},
    "override_settings_restore_afterwards": True,
    "save_images": True, "send_images": True, "do_not_save_grid": False, "do_not_save_samples": False,
}


def test_sillytavern_gets_its_image_and_can_ask_for_the_prompt_rendered_exactly(server):
    client = httpx.Client(base_url=server.url, timeout=300)
    assert "forge_preset" not in client.get("/sdapi/v1/options").json()  # it checks for Forge first
    res = client.post("/sdapi/v1/txt2img", json=SILLYTAVERN_BODY)
    assert res.status_code == 200, res.text
    data = res.json()
    assert png(data["images"][0])  # generateAutoImage reads data.images[0]
    assert "auth" not in data["parameters"]  # the echoed request leaves the client's credential out
    info = json.loads(data["info"])
    assert info["seed"] >= 1234 and info["reverie"]["mode"] == "idea"

    exact = {**SILLYTAVERN_BODY, "n_iter": 2,
             "override_settings": {**SILLYTAVERN_BODY["override_settings"], "reverie_mode": "exact"}}
    res = client.post("/sdapi/v1/txt2img", json=exact)
    assert res.status_code == 200, res.text
    info = json.loads(res.json()["info"])
    assert info["all_prompts"] == [SILLYTAVERN_BODY["prompt"]] * 2 and info["all_seeds"] == [1234, 1235]
    assert info["steps"] == 2
    # Recorded like any run: its images have a lineage that says why the prompt is as written.
    run = server.studio.store.run_tree(info["reverie"]["run_id"])
    assert run["prompts"][0]["source"] == "exact" and len(run["prompts"][0]["renders"]) == 2


def test_img2img_takes_the_image_from_the_body_and_never_a_path(server):
    buf = io.BytesIO()
    Image.new("RGB", (128, 128), (200, 30, 30)).save(buf, format="PNG")
    body = {"prompt": "the same scene at night", "init_images": [base64.b64encode(buf.getvalue()).decode()],
            "denoising_strength": 0.6, "width": 128, "height": 128}
    res = httpx.post(f"{server.url}/sdapi/v1/img2img", json=body, timeout=300)
    assert res.status_code == 200, res.text
    assert png(res.json()["images"][0])
    assert list((server.studio.home / "a1111").glob("init-*.png"))


@pytest.mark.parametrize("body, says", [
    ({"prompt": "a fox", "width": 99999}, "width is from 64"),
    ({"prompt": ""}, "prompt is empty"),
    ({"prompt": "a fox", "batch_size": 8, "n_iter": 8}, "at most 10 images"),
    ({"prompt": "a fox", "override_settings": {"sd_model_checkpoint": "sd-9000"}}, "unknown model"),
    ({"prompt": "a fox", "override_settings": {"reverie_mode": "loud"}}, "reverie_mode is idea"),
])
def test_bad_requests_are_one_line_in_a1111s_error_shape(server, body, says):
    res = httpx.post(f"{server.url}/sdapi/v1/txt2img", json=body, timeout=60)
    assert res.status_code == 422
    assert says in res.json()["detail"] and res.json()["errors"] == res.json()["detail"]


def test_the_small_routes_answer_in_a1111_shapes(server):
    samplers = httpx.get(f"{server.url}/sdapi/v1/samplers").json()
    assert all({"name", "aliases", "options"} <= set(s) for s in samplers)
    progress = httpx.get(f"{server.url}/sdapi/v1/progress").json()
    assert progress["progress"] == 0.0 and progress["state"]["job_count"] == 0  # SillyTavern waits for this
