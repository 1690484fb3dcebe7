"""Accepted requests survive the server: kill -9 with two runs in flight, restart, both finish once."""

from __future__ import annotations

import os
import signal

import httpx
import pytest

from reverie.store.db import Store
from reverie.store.serve_requests import ServeRequests
from tests.serve_helpers import cli_server, free_port, raw_generation, wait_until


@pytest.mark.slow
def test_kill_9_with_two_requests_in_flight_then_restart_finishes_both_once(home, tmp_path):
    log = tmp_path / "serve.log"
    port = free_port()
    bodies = [{"prompt": "a heron in fog", "n": 6, "quality": "hd", "size": "256x256"},
              {"prompt": "a copper kettle", "n": 6, "quality": "hd", "size": "256x256"}]
    with cli_server(home, port, log=log) as proc:
        sockets = [raw_generation(port, b) for b in bodies]
        store = Store(home)
        queue = ServeRequests(store)

        def both_rendering():
            rows = [queue.get(1), queue.get(2)]
            return all(r and r["run_id"] and store.ok_count(r["run_id"]) >= 1 for r in rows)

        wait_until(both_rendering, what="both requests to have rendered an image")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        for s in sockets:
            s.close()
    rows = [queue.get(1), queue.get(2)]
    run_ids = [r["run_id"] for r in rows]
    assert all(r["status"] == "running" for r in rows)  # killed mid-run: still open
    assert all(store.get_run(rid)["status"] != "done" for rid in run_ids)
    before = {rid: store.ok_count(rid) for rid in run_ids}

    with cli_server(home, free_port(), log=log) as proc2:
        wait_until(lambda: all(queue.get(i)["status"] == "done" for i in (1, 2)), timeout=600,
                   what="the restarted server to finish both requests")
        status = httpx.get(f"http://127.0.0.1:{proc2.args[proc2.args.index('--port') + 1]}/api/requests/1").json()
        assert status["status"] == "done" and len(status["best"]) == 6
    assert "finishing 2 request(s) an earlier server accepted" in log.read_text()

    # The same two runs went on (no new run for either request), and no image was made twice.
    runs = store.list_runs(limit=10)
    assert sorted(r["id"] for r in runs) == sorted(run_ids)
    for rid in run_ids:
        assert store.get_run(rid)["status"] == "done"
        rows = store.render_rows(rid)
        assert len({r["spec_sha"] for r in rows}) == len(rows)
        assert len({r["sha256"] for r in rows if r["status"] == "ok"}) == len([r for r in rows if r["status"] == "ok"])
        assert store.ok_count(rid) > before[rid]
        assert len({r["round"] for r in rows}) > 1  # quality hd: the critic's loop, past the first round
    assert queue.open_requests() == []
    store.close()
