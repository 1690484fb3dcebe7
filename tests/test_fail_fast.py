"""Slow failures made fast: what cannot work is one line before the engine loads, and no run is left
behind in `runs` or the gallery. (No wall-clock assertion: a loaded machine decides the seconds.)"""

from __future__ import annotations

import os
import socket

import pytest

from reverie.store.db import Store
from tests.conftest import run_cli


def no_runs(home) -> bool:
    if not (home / "reverie.db").exists():
        return True
    store = Store(home)
    try:
        return store.list_runs(limit=5) == []
    finally:
        store.close()


HEAVY = ("torch", "diffusers", "transformers", "open_clip")


def imported(stderr: str) -> set[str]:
    """The modules a run imported, from the lines PYTHONPROFILEIMPORTTIME=1 (-X importtime as an
    environment variable, so the real console script runs unchanged) writes on stderr."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def said(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not line.startswith("import time:")]


CASES = [
    (["--profile", "sdxl"], "reverie models pull sdxl"),
    (["--engine", "diffusers"], "reverie models pull z-image-turbo"),
    (["--model-path", "/nope"], "model path /nope does not exist"),
    (["--engine", "tiny", "--device", "cuda"], "device cuda is not available here"),
    (["--comfy-url", "127.0.0.1:1"], "no ComfyUI server answers"),
    # TEST-NET-1 (RFC 5737) is never routed: refused, unreachable, or no answer within the wait.
    (["--comfy-url", "http://192.0.2.1:8188"], "no ComfyUI server answers"),
]


@pytest.mark.parametrize("args, words", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_what_cannot_run_is_one_line_before_torch_and_leaves_no_run(home, args, words):
    if "--device" in args and any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/kfd")):
        pytest.skip("this machine has a GPU driver")
    res = run_cli("make", "a fox", "--n", "1", "--rounds", "1", *args, home=home, env={"PYTHONPROFILEIMPORTTIME": "1"})
    lines = said(res.stderr)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and words in errors[0], lines
    assert "LLM" not in "\n".join(lines)  # no word about a language model nobody asked for
    assert no_runs(home)
    modules = imported(res.stderr)
    assert "reverie.cli" in modules  # the import log is read: an empty one would prove nothing
    assert not {m for m in modules if m.split(".")[0] in HEAVY}, sorted(m for m in modules if m.split(".")[0] in HEAVY)


def test_a_device_hidden_by_cuda_visible_devices_is_said_without_torch(home):
    res = run_cli("make", "a fox", "--engine", "tiny", "--device", "cuda:1", home=home,
                  env={"PYTHONPROFILEIMPORTTIME": "1", "CUDA_VISIBLE_DEVICES": "-1"})
    assert res.returncode == 2
    assert said(res.stderr) == ["error: device cuda:1 is not available here (CUDA_VISIBLE_DEVICES='-1' hides every GPU): "
                                "use --device cpu, or leave --device out"]
    assert "torch" not in imported(res.stderr) and no_runs(home)


def test_a_comfy_url_without_scheme_gets_http_and_says_so(home):
    res = run_cli("make", "a fox", "--comfy-url", "127.0.0.1:1", home=home)
    assert "--comfy-url 127.0.0.1:1 has no scheme: using http://127.0.0.1:1" in res.stderr
    assert "http://127.0.0.1:1" in res.stderr.splitlines()[-1]


def test_serve_names_a_busy_port_and_the_fix(home):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        res = run_cli("serve", "--engine", "tiny", "--port", str(port), home=home, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"error: port {port} on 127.0.0.1 is in use (another `reverie serve`, "
                                               f"or another program): pass --port {port + 1}, or stop what holds it"]


def test_the_openai_api_refuses_a_listed_model_that_cannot_run_without_accepting_it(home):
    import openai

    from reverie.store.serve_requests import ServeRequests
    from tests.serve_helpers import ThreadServer

    with ThreadServer(home, engine="auto") as server:
        c = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        assert "sdxl" in {m.id for m in c.models.list()}
        with pytest.raises(openai.BadRequestError) as e:  # 400: a client does not retry it
            c.images.generate(prompt="a fox", model="sdxl")
        assert e.value.body["code"] == "model_not_available" and "reverie models pull sdxl" in e.value.message
        assert ServeRequests(server.studio.store).open_requests() == [] and server.studio.store.list_runs() == []
