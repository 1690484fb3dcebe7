"""`reverie serve` as a person runs it in a terminal: a busy port named with its fix, a line per request
on the console, and a stop (Ctrl-C, SIGTERM) that does not wait for runs to end: they stop at their
next step, and their requests stay accepted for the next start. A real server in a subprocess."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from reverie.store.db import Store
from reverie.store.serve_requests import ServeRequests
from tests.conftest import run_cli
from tests.serve_helpers import free_port, raw_generation, wait_until


def start_server(home: Path, port: int) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("reverie")
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "300"}
    env.pop("REVERIE_TOKEN", None)
    proc = subprocess.Popen([str(exe), "serve", "--engine", "tiny", "--scorer", "heuristic", "--port", str(port),
                             "--home", str(home)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)

    def up():
        if proc.poll() is not None:
            raise AssertionError(f"reverie serve exited with {proc.returncode}: {proc.stderr.read()}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, timeout=120, what="reverie serve to listen")
    return proc


def stop_while_rendering(home: Path, proc: subprocess.Popen, client, signum):
    """Once request 1 has stored its first image, stop the server with signum; what it said on
    stderr and what the waiting client got back, with the store to look at afterwards."""
    store = Store(home)
    queue = ServeRequests(store)
    wait_until(lambda: (queue.get(1) or {}).get("run_id") and store.ok_count(queue.get(1)["run_id"]) >= 1,
               what="the request to render its first image")
    proc.send_signal(signum)
    errors = proc.stderr.read()
    proc.wait(60)
    answer = client.recv(65536).decode(errors="replace")
    client.close()
    return store, queue, errors, answer


# SIGTERM is the new path (Python's default ends the process on the spot); Ctrl-C's is older and runs with -m slow.
@pytest.mark.parametrize("signum", [pytest.param(signal.SIGINT, marks=pytest.mark.slow), signal.SIGTERM],
                         ids=["SIGINT", "SIGTERM"])
def test_a_stop_leaves_the_running_request_to_the_next_start_and_says_so(home, signum):
    port = free_port()
    proc = start_server(home, port)
    try:
        # A second server on the same home and port: the line names our own server and its fix.
        again = run_cli("serve", "--engine", "tiny", "--port", str(port), home=home, timeout=120)
        assert again.returncode == 2
        assert again.stderr.strip().splitlines() == [
            f"error: port {port} on 127.0.0.1 is in use by `reverie serve` for this home (pid {proc.pid}): "
            f"`reverie serve --stop` stops it, or pass --port {port + 1}"]

        client = raw_generation(port, {"prompt": "a heron in fog", "n": 6, "quality": "hd", "size": "256x256"})
        store, queue, errors, answer = stop_while_rendering(home, proc, client, signum)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == (130 if signum == signal.SIGINT else 143), errors
    lines = errors.strip().splitlines()
    assert lines[-1] == "reverie: stopped; 1 accepted request(s) left for the next `reverie serve` on this home to finish"
    assert "Traceback" not in errors and "ERROR" not in errors  # no uvicorn line about tasks it had to cancel
    # One console line for the request (the health polls stay in the log only).
    assert [line for line in lines if re.fullmatch(r"\d\d:\d\d:\d\d 127\.0\.0\.1 POST /v1/images/generations 503 \d+ms", line)], errors
    assert "/healthz" not in errors
    assert answer.startswith("HTTP/1.1 503") and "stays accepted" in answer
    row = queue.get(1)
    assert row["status"] == "running" and [r["id"] for r in queue.open_requests()] == [1]
    assert store.get_run(row["run_id"])["status"] != "done" and store.ok_count(row["run_id"]) < 6 * 3
    store.close()


def test_a_web_chat_turn_cut_by_a_stop_is_made_by_the_next_start_in_the_same_run(home):
    from reverie.serve.service import ServeService
    from tests.serve_helpers import ThreadServer

    with ThreadServer(home) as server:
        sent = httpx.post(f"{server.url}/api/studio/send", json={"session": "s1", "message": "a lighthouse at dusk",
                                                                  "n": 2, "quality": "hd"}, timeout=120).json()
        job = server.service.job(sent["request_id"])
        wait_until(lambda: job.run_id and any(e["kind"] == "step" for e in job.events), what="the turn to render")
        left = server.service.close(wait=600)  # as the server's Ctrl-C or SIGTERM does
        store = server.studio.store
        row = server.service.queue.get(job.id)
        assert left == 1 and row["status"] == "running" and row["run_id"] == job.run_id
        assert store.chats.turns("s1") == []  # not recorded half-done
        assert store.get_run(job.run_id)["status"] != "done"

        again = ServeService(server.studio)  # the next start on this home
        [resumed] = again.recover()
        wait_until(lambda: resumed.done.is_set(), timeout=600, what="the next start to make the turn")
        again.close()
        assert resumed.status == "done", resumed.error
        [turn] = store.chats.turns("s1")
        assert turn["run_id"] == job.run_id and store.get_run(job.run_id)["status"] == "done"
        assert again.queue.open_requests() == []


def test_an_a1111_request_open_at_a_stop_is_answered_503_in_its_own_shape(home):
    """SillyTavern or Open WebUI waiting on /sdapi/v1/txt2img gets A1111's error shape at once, and
    the request stays accepted for the next start, as an OpenAI request does."""
    import json

    port = free_port()
    proc = start_server(home, port)
    try:
        client = raw_generation(port, {"prompt": "a heron in fog", "batch_size": 6, "width": 256, "height": 256},
                                path="/sdapi/v1/txt2img")
        store, queue, errors, answer = stop_while_rendering(home, proc, client, signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, errors
    assert answer.startswith("HTTP/1.1 503"), answer
    payload = json.loads(answer.split("\r\n\r\n", 1)[1])
    assert "shutting down" in payload["detail"] and payload["error"] == "HTTPException", payload
    assert [r["id"] for r in queue.open_requests()] == [1]
    store.close()
