"""Done-when for crash-proof runs: SIGKILL a real `reverie make` at several points, rerun the
same command until it finishes, and check that nothing was lost, nothing was rendered twice,
and every row's file is there with the right hash."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli


def _ok_renders(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return conn.execute("select count(*) from renders where status = 'ok'").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return 0  # not created or mid-migration yet


def _kill_after(cmd: list[str], db: Path, rows: int, env: dict) -> None:
    """Start the command, SIGKILL it as soon as the database holds `rows` ok renders."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        while proc.poll() is None and _ok_renders(db) < rows:
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.slow  # four real processes with the tiny engine: about 1 CPU-minute
def test_sigkill_and_resume_loses_nothing(home):
    exe = str(Path(sys.executable).with_name("reverie"))
    # One seed per forward pass: the count of stored renders climbs one by one, so each kill lands
    # where it is meant to (four at once could jump past it, and the run would end un-killed).
    cmd = [exe, "make", "a fox in the rain", "--n", "4", "--rounds", "3", "--seed", "7", "--home", str(home),
           "--engine", "tiny", "--batch-size", "1", "--json"]
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("OPENAI_BASE_URL", None)
    db = home / "reverie.db"

    _kill_after(cmd, db, 1, env)
    _kill_after(cmd, db, 5, env)
    _kill_after(cmd, db, 9, env)
    assert _ok_renders(db) < 12, "a killed process finished the run: the kills did not land"
    for _ in range(3):  # each attempt makes progress; normally the first one finishes
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        if done.returncode == 0:
            break
    assert done.returncode == 0, done.stderr

    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    runs = conn.execute("select id, status from runs").fetchall()
    assert len(runs) == 1 and runs[0][1] == "done", runs  # one run, continued, never restarted
    rows = conn.execute("select spec_sha, seed, path, sha256 from renders where status = 'ok'").fetchall()
    assert len(rows) == 12
    assert len({r[0] for r in rows}) == 12 and len({r[1] for r in rows}) == 12
    for _, _, path, sha in rows:
        data = (home / path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha
        assert Path(path).name == f"{sha}.png"  # names come from content, never from prompts
    # Every ok render was scored exactly once.
    assert conn.execute("select count(distinct render_id) from scores where name = 'composite'").fetchone()[0] == 12
    assert not list((home / "images").glob("*/.*.tmp"))

    # And an image alone reproduces, pixel for pixel, from its own metadata.
    rep = run_cli("reproduce", str(home / rows[-1][2]), "--engine", "tiny", home=home)
    assert rep.returncode == 0, rep.stdout + rep.stderr
    assert "match" in rep.stdout


def _inflight(db: Path) -> list[int]:
    """The batch items whose round is in the engine now (what a death would be pinned on)."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return [r[0] for r in conn.execute("select idx from batch_items where inflight_round is not null")]
        finally:
            conn.close()
    except sqlite3.Error:
        return []  # not created, or its tables not made yet


@pytest.mark.slow  # seven real batch processes: about a CPU-minute
def test_six_kills_from_outside_quarantine_no_idea(tmp_path):
    """SIGKILL a real `reverie batch` six times at random moments while a round is in the engine (the
    case that once set an idea aside as "crashed the process twice"), then let it finish: every
    idea is done with its full budget, none was held to blame."""
    import json
    import random

    exe = str(Path(sys.executable).with_name("reverie"))
    ideas = tmp_path / "ideas.txt"
    ideas.write_text("a fox in the rain\na red car at night\na boat on a lake\n")
    home = tmp_path / "home"
    cmd = [exe, "batch", str(ideas), "--per-prompt", "8", "--n", "4", "--keep", "1", "--megapixels", "0.02",
           "--engine", "fixed", "--scorer", "heuristic", "--home", str(home), "--json"]
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("OPENAI_BASE_URL", None)
    db = home / "reverie.db"
    rng = random.Random()
    landed: list[list[int]] = []
    for n in range(6):
        log = tmp_path / f"kill-{n}.log"
        with open(log, "wb") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        try:
            # A round the last process left in the engine is first judged by this one (it says so),
            # then this process's own round goes in: that is when the kill must land.
            while landed and landed[-1] and proc.poll() is None and "was rendering" not in log.read_text():
                time.sleep(0.01)
            while proc.poll() is None and not _inflight(db):
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.15))  # somewhere in the forward pass, or just after it
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        landed.append(_inflight(db))
    assert sum(bool(x) for x in landed) >= 2, f"the kills did not land while rendering: {landed}"

    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "set aside" not in done.stderr and "crashed the process" not in done.stderr
    items = json.loads(done.stdout)["items"]
    assert [(i["status"], i["rendered"]) for i in items] == [("done", 8)] * 3, items
