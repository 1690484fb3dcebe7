"""A shared ComfyUI: a wait behind other clients is announced with its place in line, and a SIGTERM
takes reverie's prompts off the server as Ctrl-C does. Against the scripted ComfyUI of comfy_server.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from reverie.types import EngineImage, EngineProgress, Queued, TypedEvent
from tests.comfy_server import ComfyServer
from tests.test_comfyui import engine_for, same_pixels, zspec


def wait_for(condition, seconds: float = 60) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def interrupt_everything(url: str) -> None:
    """POST /interrupt with no prompt id, as ComfyUI's own stop button does: whatever runs stops."""
    req = urllib.request.Request(url + "/interrupt", data=b"{}", method="POST", headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).read()


def test_a_wait_behind_another_client_says_how_many_prompts_are_ahead():
    with ComfyServer(step_delay=0.05) as s:
        theirs = threading.Thread(target=lambda: engine_for(s).render([zspec(seed=99, steps=2000)]), daemon=True)
        theirs.start()
        assert wait_for(lambda: s.started)  # their long prompt runs: ours will wait behind it
        events = []

        def progress(event):
            events.append(event)
            if event.kind == "queued":  # announced while we wait: now let theirs end
                interrupt_everything(s.url)

        outs = engine_for(s).render([zspec(seed=1)], progress)
        theirs.join(60)
    assert [e for e in events if not isinstance(e, TypedEvent)] == []
    assert {Queued, EngineProgress, EngineImage} <= {type(e) for e in events}
    queued = [e.data for e in events if e.kind == "queued"]
    assert queued and queued[0]["ahead"] == 1 and queued[0]["server"] == s.url
    assert queued[0]["message"] == f"waiting in the queue of ComfyUI at {s.url}: 1 prompt ahead of ours"
    assert outs[0].error == "" and same_pixels(outs[0].image, 1)


def test_a_sigterm_takes_our_prompts_off_the_server_as_ctrl_c_does(tmp_path):
    home = tmp_path / "home"
    exe = Path(sys.executable).with_name("reverie")
    with ComfyServer(step_delay=0.2) as s:
        proc = subprocess.Popen([str(exe), "make", "a fox in the rain", "--n", "4", "--rounds", "1", "--seed", "3",
                                 "--megapixels", "0.05", "--comfy-url", s.url, "--home", str(home)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "NO_COLOR": "1"})
        try:
            # One of ours runs and another waits behind it (the lane keeps two on the server).
            assert wait_for(lambda: s.started and len(s.pending) >= 1, 120), proc.stderr
            proc.send_signal(signal.SIGTERM)
            out, errors = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        ours = set(s.prompt_ids)
    assert proc.returncode == 143, errors
    assert "Traceback" not in errors and "interrupted: everything rendered so far is saved" in " ".join(errors.split())
    assert s.pending == []  # nothing of ours is left waiting on the server
    assert set(s.deleted) | {i for i in s.interrupts if i} >= ours - set(s.history)
