"""Preflight across a pool, lineage's worker, and cleanup after a fatal error, against the scripted ComfyUI."""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import pytest

from reverie.types import ReverieError
from tests.comfy_server import ComfyServer
from tests.conftest import run_cli
from tests.test_comfyui import engine_for, same_pixels, zspec

ZIMAGE_FILES = {"unet_name": ["z_image_turbo_bf16.safetensors"], "clip_name": ["qwen_3_4b.safetensors"],
                "vae_name": ["ae.safetensors"]}


def test_a_pool_drops_the_server_that_lacks_files_and_says_why_once():
    lacking = {**ZIMAGE_FILES, "vae_name": []}
    with ComfyServer(models=lacking) as poor, ComfyServer(models=ZIMAGE_FILES, version="0.3.40") as rich:
        engine = engine_for(poor, rich)
        events = []
        outs = engine.render([zspec(seed=s) for s in (1, 2, 3)], events.append)
        outs += engine.render([zspec(seed=4)], events.append)
        assert poor.workflows == [] and len(rich.workflows) == 4
        # Read once per server for the engine's life, not once per call.
        assert poor.gets == rich.gets == ["/system_stats", "/object_info"]
    assert all(o.error == "" and same_pixels(o.image, o.spec.seed) for o in outs)
    assert {o.worker for o in outs} == {f"{rich.url} (ComfyUI 0.3.40)"}
    notices = [e.data["message"] for e in events if e.kind == "notice"]
    assert notices == [f"left out of the ComfyUI pool: ComfyUI at {poor.url} cannot run z-image-turbo: it lacks vae file "
                       "ae.safetensors (put it in models/vae or pass --comfy-file vae=NAME); rendering on 1 of 2 servers"]


def test_a_pool_where_no_server_can_render_names_each_in_one_line():
    with ComfyServer(models={**ZIMAGE_FILES, "vae_name": []}) as a, ComfyServer(models={**ZIMAGE_FILES, "unet_name": []}) as b:
        c = ComfyServer()
        c.close()
        with pytest.raises(ReverieError) as e:
            # c refuses at once; a and b answer, however slowly a loaded machine lets them (no clock decides).
            engine_for(a, b, c, timeout=120.0).render([zspec()])
    message = str(e.value)
    assert "\n" not in message and message.startswith("no ComfyUI server can render this: ")
    assert f"ComfyUI at {a.url} cannot run z-image-turbo: it lacks vae file ae.safetensors" in message
    assert f"ComfyUI at {b.url} cannot run z-image-turbo: it lacks unet file z_image_turbo_bf16.safetensors" in message
    assert f"ComfyUI at {c.url} does not answer" in message


class Stop(Exception):
    pass


def test_after_a_fatal_error_our_queued_prompts_are_deleted_and_the_running_one_interrupted():
    with ComfyServer(step_delay=0.05) as s:
        engine = engine_for(s)  # a lone server: all five prompts are queued at once

        def take(output):
            raise Stop("the caller cannot store more")

        with pytest.raises(Stop):
            engine.render([zspec(seed=seed) for seed in range(10, 15)], on_output=take)
        first, *rest = s.prompt_ids
        assert len(s.prompt_ids) == 5 and s.executed == [10]
        # The second prompt was running when the first image came back; the rest were waiting.
        assert s.interrupts == [rest[0]]
        assert sorted(s.deleted) == sorted(rest[1:])
        assert s.pending == [] and first not in s.deleted


def test_ctrl_c_cancels_only_our_own_prompts():
    with ComfyServer(step_delay=0.05) as s:
        other = engine_for(s)  # another client of the same server, queued behind us
        theirs = threading.Thread(target=lambda: other.render([zspec(seed=99)]), daemon=True)

        def ctrl_c_once_theirs_is_queued(output):
            theirs.start()
            deadline = time.monotonic() + 30
            while len(s.prompt_ids) < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            engine_for(s).render([zspec(seed=seed) for seed in (1, 2, 3)], on_output=ctrl_c_once_theirs_is_queued)
        ours, their_id = s.prompt_ids[:3], s.prompt_ids[3]
        assert set(s.deleted) | {i for i in s.interrupts if i} == set(ours[1:])
        theirs.join(60)
        assert their_id not in s.deleted and their_id not in s.interrupts
        assert s.executed == [1, 99]


def test_renders_record_the_worker_and_lineage_prints_it(tmp_path):
    home = tmp_path / "home"
    with ComfyServer(version="0.3.33") as s:
        proc = run_cli("make", "a fox in the rain", "--n", "1", "--rounds", "1", "--seed", "40", "--megapixels", "0.05",
                       "--engine", "comfyui", "--comfy-url", s.url, home=home, timeout=120)
        assert proc.returncode == 0, proc.stderr
    worker = f"{s.url} (ComfyUI 0.3.33)"
    with sqlite3.connect(home / "reverie.db") as db:
        rows = db.execute("select id, worker from renders").fetchall()
    assert [w for _, w in rows] == [worker]
    shown = run_cli("lineage", str(rows[0][0]), home=home, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert f"engine comfyui on {worker}" in " ".join(shown.stdout.split())


def test_models_comfy_url_reports_per_profile(tmp_path):
    with ComfyServer(models={**ZIMAGE_FILES, "ckpt_name": ["sd_xl_base_1.0.safetensors"]}) as s:
        proc = run_cli("models", "--comfy-url", s.url, "--json", home=tmp_path / "home", timeout=60)
        table = run_cli("models", "--comfy-url", s.url, home=tmp_path / "home", timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = {r["profile"]: r for r in json.loads(proc.stdout)}
    assert rows["z-image-turbo"]["ok"] and rows["z-image-turbo"]["lacks"] == [] and rows["z-image-turbo"]["dreamer"]
    assert rows["sdxl"]["ok"] and not rows["sdxl"]["dreamer"]
    assert not rows["sd15"]["ok"] and rows["sd15"]["lacks"] == [
        "checkpoint file v1-5-pruned-emaonly.safetensors (put it in models/checkpoints or pass --comfy-file checkpoint=NAME)"]
    assert rows["flux1-dev"]["lacks"] == [
        "unet file flux1-dev.safetensors (put it in models/diffusion_models or pass --comfy-file unet=NAME)",
        "clip_l file clip_l.safetensors (put it in models/text_encoders or pass --comfy-file clip_l=NAME)",
        "t5 file t5xxl_fp8_e4m3fn.safetensors (put it in models/text_encoders or pass --comfy-file t5=NAME)"]
    assert {r["version"] for r in rows.values()} == {"0.3.33"}
    # An editor-only profile is checked by its editing graph: the row names its nodes and files.
    assert not rows["qwen-image-edit-2511"]["ok"]
    assert rows["qwen-image-edit-2511"]["lacks"][0].startswith("unet file qwen_image_edit_2511_bf16.safetensors")
    assert table.returncode == 0 and "v1-5-pruned-emaonly.safetensors" in table.stdout


def test_models_comfy_url_with_no_server_is_one_line(tmp_path):
    s = ComfyServer()
    s.close()
    proc = run_cli("models", "--comfy-url", s.url, home=tmp_path / "home", timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: ComfyUI at {s.url} does not answer")


def test_models_comfy_url_at_80_columns_keeps_each_missing_file_whole(tmp_path):
    """At 80 columns the table is narrow cells only; what a profile lacks is one unbroken line
    below it, so no file name is folded into 8-character pieces."""
    with ComfyServer(models={**ZIMAGE_FILES, "ckpt_name": ["sd_xl_base_1.0.safetensors"]}) as s:
        table = run_cli("models", "--comfy-url", s.url, home=tmp_path / "home", env={"COLUMNS": "80"}, timeout=60)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert max(len(line) for line in lines if "│" in line or "┃" in line) <= 80
    sd15 = [line for line in lines if "v1-5-pruned-emaonly.safetensors" in line]
    assert len(sd15) == 1 and sd15[0].startswith("sd15: checkpoint file v1-5-pruned-emaonly.safetensors (put it in")
    flux = [line for line in lines if line.startswith("flux1-dev: ")]
    assert len(flux) == 1 and "t5xxl_fp8_e4m3fn.safetensors" in flux[0] and "clip_l.safetensors" in flux[0]
