"""The store never loses what it cannot account for, and a new home survives kills and races."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from reverie import Studio
from reverie.store.db import Store
from reverie.store.migrations import MIGRATIONS, migrate


def _make(home: Path, idea: str, n: int = 3):
    with Studio(home=home, engine="fixed", scorer="heuristic", engine_options={"latency": 0.0}) as studio:
        return studio.make(idea, n=n, rounds=1, seed=11)


def _pngs(home: Path) -> dict[str, bytes]:
    return {str(p.relative_to(home)): p.read_bytes() for p in (home / "images").glob("*/*.png")}


@pytest.mark.parametrize("damage", ["moved-aside", "emptied"])
def test_a_new_database_never_deletes_existing_images(tmp_path, damage):
    home = tmp_path / "home"
    _make(home, "a fox in the rain")
    before = _pngs(home)
    assert len(before) == 3
    # reverie's own advice for an unusable database is to move it aside; an empty file is the other case.
    for suffix in ("", "-wal", "-shm"):
        db = home / f"reverie.db{suffix}"
        if db.exists():
            db.rename(home / f"reverie.db{suffix}.aside")
    if damage == "emptied":
        (home / "reverie.db").write_bytes(b"")
    result = _make(home, "a lighthouse at dusk")
    after = _pngs(home)
    assert len(result.renders) == 3
    for rel, data in before.items():
        assert after.get(rel) == data, f"{rel} was deleted or changed"


def test_a_png_copied_in_from_another_home_is_kept(tmp_path):
    other = tmp_path / "other"
    _make(other, "a red car")
    home = tmp_path / "home"
    _make(home, "a fox in the rain")
    foreign = next((other / "images").glob("*/*.png"))
    target = home / "images" / foreign.parent.name / foreign.name
    target.parent.mkdir(exist_ok=True)
    shutil.copy2(foreign, target)
    os.utime(target)  # fresh mtime: newer than any run of this home
    result = _make(home, "a fox in the rain", n=4)
    from reverie.store.recovery import sweep_orphans

    store = Store(home)  # the sweep a resumed run makes: it adopts its own strays, nothing else
    assert sweep_orphans(store, result.run_id)["adopted"] == []
    store.close()
    assert target.exists() and target.read_bytes() == foreign.read_bytes()


def test_a_failed_migration_leaves_no_half_made_schema(tmp_path):
    def m999_breaks_half_way(db):
        db["half_made"].create({"id": int}, pk="id")
        raise RuntimeError("killed half-way")

    home = tmp_path / "h"
    Store(home).close()
    MIGRATIONS.append((m999_breaks_half_way.__name__, m999_breaks_half_way))
    try:
        conn = sqlite3.connect(home / "reverie.db")
        import sqlite_utils

        with pytest.raises(RuntimeError):
            migrate(sqlite_utils.Database(conn))
        assert "half_made" not in sqlite_utils.Database(conn).table_names()
        assert not conn.in_transaction
        conn.close()
    finally:
        MIGRATIONS.remove((m999_breaks_half_way.__name__, m999_breaks_half_way))
    again = Store(home)  # the home still opens
    assert "half_made" not in again.db.table_names()
    again.close()


def _open_home(home: str, barrier, results) -> None:
    barrier.wait()
    try:
        Store(home).close()
        results.put("ok")
    except Exception as e:  # reported to the test, which names it
        results.put(f"{type(e).__name__}: {e}")


def test_processes_opening_a_fresh_home_together_all_succeed(tmp_path):
    ctx = mp.get_context("spawn")
    for trial in range(6):
        home = str(tmp_path / f"h{trial}")
        barrier, results = ctx.Barrier(3), ctx.Queue()
        procs = [ctx.Process(target=_open_home, args=(home, barrier, results)) for _ in range(3)]
        for p in procs:
            p.start()
        got = [results.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(30)
        assert got == ["ok"] * 3, got
        names = [r[0] for r in sqlite3.connect(Path(home) / "reverie.db").execute("select name from _migrations")]
        assert names == sorted(n for n, _ in MIGRATIONS)


KILL_DURING_SCHEMA = r"""
import os, signal, sys, sqlite_utils
from reverie.store import migrations
original = migrations.m004_batches_and_chats
def slow(db):
    original(db)
    os.kill(os.getpid(), signal.SIGKILL)  # dies inside the transaction, after some DDL
migrations.MIGRATIONS[:] = [(n, slow if n == "m004_batches_and_chats" else f) for n, f in migrations.MIGRATIONS]
from reverie.store.db import Store
Store(sys.argv[1])
"""


def test_sigkill_during_first_schema_creation_leaves_a_usable_home(tmp_path):
    home = tmp_path / "h"
    r = subprocess.run([sys.executable, "-c", KILL_DURING_SCHEMA, str(home)], capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL
    store = Store(home)  # the whole schema is made now, in one go
    assert {"runs", "batches", "chat_turns"} <= set(store.db.table_names())
    store.close()


def test_a_run_whose_process_is_gone_is_listed_as_interrupted(tmp_path):
    from reverie.store.locks import RunLock
    from reverie.types import Request

    store = Store(tmp_path / "h")
    alive = store.create_run(Request(idea="held"), "fixed", 1)
    dead = store.create_run(Request(idea="killed"), "fixed", 2)
    lock = RunLock(store.home, alive)
    assert lock.acquire()
    try:
        statuses = {r["id"]: r["status"] for r in store.list_runs()}
        assert statuses == {alive: "running", dead: "interrupted"}
        assert store.get_run(dead)["status"] == "interrupted" and "run the same command" in store.get_run(dead)["stop_reason"]
    finally:
        lock.release()
        store.close()


class FailsEveryRender:
    name, version, identity = "broken", "broken 1", "broken-v1"

    def render(self, specs, progress=None, on_output=None):
        from reverie.types import EngineOutput

        outs = []
        for spec in specs:
            out = EngineOutput(spec=spec, image=None, engine=self.name, engine_version=self.version, seconds=0.0,
                               error="CheckpointLoaderSimple: could not detect model type")
            if on_output:
                on_output(out)
            outs.append(out)
        return outs

    def close(self):
        pass


def test_a_run_with_no_image_fails_with_the_reason(tmp_path):
    from reverie.types import ReverieError

    with Studio(home=tmp_path / "h", engine=FailsEveryRender(), scorer="heuristic") as studio:
        with pytest.raises(ReverieError, match="no image was rendered: CheckpointLoaderSimple: could not detect"):
            studio.make("a fox", n=2, rounds=1, megapixels=0.02)
        run = studio.store.list_runs()[0]
        assert run["status"] == "failed" and "could not detect model type" in run["stop_reason"]
