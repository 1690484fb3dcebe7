"""The run lifecycle: every way in opens its runs through Studio.open_run, which holds the run's lock."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reverie.orchestrator.run import Run
from reverie.orchestrator.studio import Studio
from reverie.types import ReverieError
from tests.conftest import run_cli


def _count_renders(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return conn.execute("select count(*) from renders where status = 'ok'").fetchone()[0]
    except sqlite3.OperationalError:  # the tables are not there yet
        return 0


def test_a_rendering_batch_shows_its_runs_running_to_another_process(tmp_path):
    file = tmp_path / "ideas.txt"
    file.write_text("a fox in the rain\na red car at night\n")
    home = tmp_path / "home"
    exe = Path(sys.executable).with_name("reverie")
    proc = subprocess.Popen([str(exe), "batch", str(file), "--per-prompt", "400", "--keep", "1", "--megapixels", "0.02",
                             "--engine", "fixed", "--scorer", "heuristic", "--home", str(home)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "NO_COLOR": "1"})
    try:
        deadline = time.monotonic() + 120
        while _count_renders(home / "reverie.db") < 4:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no renders appeared"
            time.sleep(0.1)
        r = run_cli("runs", "--json", home=home)  # another process reads the store
        assert r.returncode == 0, r.stderr
        runs = json.loads(r.stdout)
        assert proc.poll() is None, "the batch ended before it was looked at: give it a larger budget"
        assert len(runs) == 2 and {run["status"] for run in runs} == {"running"}, runs
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)  # a bound against hanging, not a timing claim
    r = run_cli("runs", "--json", home=home)
    assert {run["status"] for run in json.loads(r.stdout)} == {"interrupted"}


def test_an_open_run_holds_its_lock_until_closed(tmp_path):
    with Studio(home=tmp_path / "home", engine="fixed", engine_options={"latency": 0.0}, scorer="heuristic") as studio:
        request = studio.request("a fox in the rain", n=2, rounds=1, megapixels=0.02, seed=7)
        with studio.open_run(request) as run:
            assert isinstance(run, Run) and not run.resumed
            assert studio.store.get_run(run.id)["status"] == "running"
            with pytest.raises(ReverieError, match="being made right now"):
                studio.open_run(request)  # the same seeds twice at once: refused, naming the run
            with pytest.raises(ReverieError, match="being made right now"):
                studio.open_run(request, run_id=run.id)
            events = list(run.loop())
        assert "run_started" in [e.kind for e in events] and events[-1].kind == "finished"
        assert studio.store.get_run(run.id)["status"] == "done"
        with pytest.raises(ReverieError, match="is closed"):
            run.drive()  # its lock is gone: another process may be continuing it
        best = run.best(2)
        assert best and best == studio.best(run.id, k=2)
        # Closed: the run can be opened again by id (nothing left to do, it is simply held).
        with studio.open_run(request, run_id=run.id) as again:
            assert again.resumed and again.id == run.id
