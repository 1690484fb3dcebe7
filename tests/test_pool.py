"""The engine worker's lanes over a ComfyUI pool (scripted servers on loopback, real HTTP and websockets)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time

import pytest

from reverie.orchestrator.worker import EngineWorker, RenderStopped
from reverie.types import TypedEvent
from tests.comfy_server import ComfyServer
from tests.conftest import REPO, run_cli
from tests.test_comfyui import engine_for, same_pixels, zspec


def test_n4_on_two_servers_puts_renders_on_both(tmp_path):
    """A pool server holds two prompts at once, so one round of four is two and two, not four on one."""
    home = tmp_path / "home"
    with ComfyServer(step_delay=0.01, version="0.3.40") as a, ComfyServer(step_delay=0.01, version="0.3.41") as b:
        proc = run_cli("make", "a fox in the rain", "--n", "4", "--rounds", "1", "--seed", "10", "--megapixels", "0.01",
                       "--engine", "comfyui", "--comfy-url", a.url, "--comfy-url", b.url, home=home, timeout=180)
        assert proc.returncode == 0, proc.stderr
        assert len(a.executed) + len(b.executed) == 4
        assert a.executed and b.executed, (a.executed, b.executed)
    with sqlite3.connect(home / "reverie.db") as db:
        workers = [w for (w,) in db.execute("select worker from renders where status = 'ok'")]
    assert len(workers) == 4
    assert {w.split(" ")[0] for w in workers} == {a.url, b.url}


def test_two_runs_share_the_pool_and_a_dead_server_hands_its_seeds_on():
    """Jobs of two runs go to both servers seed by seed; one server dies mid-way and the other
    renders what it held, each spec delivered once, with one notice."""
    with ComfyServer(die_at=3, step_delay=0.005) as doomed, ComfyServer(step_delay=0.005) as survivor:
        # The doomed server drops its sockets (an error at once); no clock may judge the live one.
        engine = engine_for(doomed, survivor, timeout=120.0)
        worker = EngineWorker()
        got: list = []
        try:
            jobs = [worker.submit(engine, [zspec(seed=s) for s in seeds], on_output=got.append, priority=(0, "z", i))
                    for i, seeds in enumerate([range(100, 106), range(200, 206)])]
            for job in jobs:
                assert job.done.wait(600)  # a safety net against a hang, not a time limit
                assert job.error is None, job.error
        finally:
            worker.close()
        assert doomed.dead
    seeds = sorted(o.spec.seed for o in got)
    assert seeds == [*range(100, 106), *range(200, 206)]  # each spec handed on exactly once
    assert all(o.error == "" and same_pixels(o.image, o.spec.seed) for o in got)
    assert [o.spec.seed for o in jobs[0].outputs] == list(range(100, 106))
    # The survivor rendered each of its seeds once; a seed the doomed server finished but could
    # not hand over before it died is rendered again there, and delivered once.
    assert len(set(survivor.executed)) == len(survivor.executed)
    assert set(survivor.executed) | set(doomed.executed) == set(seeds)
    assert {o.spec.seed for o in got if o.worker.startswith(survivor.url)} == set(survivor.executed)
    notices = []
    for job in jobs:
        while not job.events.empty():
            event = job.events.get_nowait()
            assert isinstance(event, TypedEvent), event  # the worker's engine_image and notice, and ComfyUI's
            if event.kind == "notice":
                notices.append(event.data["message"])
    assert len(notices) == 1 and doomed.url in notices[0] and "move to the other servers" in notices[0], notices


def test_a_cancelled_job_takes_its_prompts_off_the_servers():
    with ComfyServer(step_delay=0.05) as a, ComfyServer(step_delay=0.05) as b:
        worker = EngineWorker()
        got: list = []
        try:
            job = worker.submit(engine_for(a, b), [zspec(seed=s) for s in range(10, 30)], on_output=got.append)
            deadline = time.monotonic() + 60
            while not got and time.monotonic() < deadline:
                time.sleep(0.01)
            job.cancel()
            assert job.done.wait(60)
            assert isinstance(job.error, RenderStopped)
            # Whatever was still queued or running on a server was taken off it, and nothing more was sent.
            queued = len(a.prompt_ids) + len(b.prompt_ids)
            time.sleep(0.5)
            assert len(a.prompt_ids) + len(b.prompt_ids) == queued
        finally:
            worker.close()
        for s in (a, b):
            assert s.pending == [] and s.running is None
    assert 1 <= len(got) < 20


def test_no_server_left_names_them_and_what_was_rendered():
    with ComfyServer(die_at=2) as lone:
        worker = EngineWorker()
        try:
            with pytest.raises(Exception) as e:
                worker.render(engine_for(lone, timeout=2.0, queue_depth=1), [zspec(seed=s) for s in (1, 2, 3)])
        finally:
            worker.close()
    message = str(e.value)
    assert lone.url in message and "1 of 3 images were rendered" in message
    assert message.endswith("start ComfyUI or pass --comfy-url")


@pytest.mark.slow
def test_bench_pool_prints_each_servers_busy_share():
    r = subprocess.run([sys.executable, str(REPO / "bench" / "bench_pool.py"), "--ideas", "2", "--per-prompt", "4",
                        "--n", "2", "--step-delay", "0.01"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    servers = [ln for ln in lines if ln.startswith("server ")]
    assert len(servers) == 2 and all("busy" in ln and "% (" in ln for ln in servers)
    assert any(ln.startswith("least busy server: ") for ln in lines)
