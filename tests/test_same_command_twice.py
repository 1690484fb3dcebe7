"""The same `make --seed` started twice at once: one makes it, the other says whose run it is
and renders nothing (the same seeds would only make the same images twice)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path


def _start(home: Path, *extra: str) -> subprocess.Popen:
    exe = str(Path(sys.executable).with_name("reverie"))
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.Popen([exe, "make", "a fox in the rain", "--n", "4", "--rounds", "3", "--megapixels", "0.01",
                             "--json", *extra, "--home", str(home)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_two_copies_of_one_seeded_make_never_render_twice(home):
    procs = [_start(home, "--seed", "5") for _ in range(2)]
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    done = next(json.loads(out) for code, out, _ in results if code == 0)
    refused = next(err for code, _, err in results if code == 2)
    last = refused.strip().splitlines()[-1]
    assert last.startswith("error: this exact request (--seed 5) is being made right now as run " + done["run_id"])
    assert "another --seed" in last and "Traceback" not in refused
    conn = sqlite3.connect(home / "reverie.db")
    assert conn.execute("select count(*) from runs").fetchone()[0] == 1
    assert conn.execute("select count(*), count(distinct spec_sha) from renders").fetchone() == (12, 12)


def test_two_unseeded_copies_explore_separately(home):
    procs = [_start(home) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert [code for code, _ in results] == [0, 0], results
    conn = sqlite3.connect(home / "reverie.db")
    assert conn.execute("select count(*) from runs").fetchone()[0] == 2
    assert conn.execute("select count(distinct base_seed) from runs").fetchone()[0] == 2
