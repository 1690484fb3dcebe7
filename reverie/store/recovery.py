"""Crash recovery: claiming a run to continue, files a crash left behind, rows whose file went missing.

Who owns a run is store/locks.py's RunLock.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Optional

from reverie.processes import pid_alive
from reverie.store.pngmeta import file_sha256, read_reverie_meta
from reverie.store.db import new_run_id
from reverie.store.locks import RunLock, home_lock
from reverie.types import EngineOutput, RenderSpec, ReverieError

UNFINISHED = ("running", "interrupted")


def claim_run(store, request, engine: str, base_seed: int, identity: str = "") -> tuple[str, int, RunLock, bool]:
    """Continue the oldest unfinished run of the same request on the same engine identity (same
    weights and model files) that no live process holds, or start a new one.
    Returns (run_id, base_seed, lock, resumed)."""
    # The store's one connection is shared with other threads (see db.locked); the claim lock
    # makes looking for a run and creating one a single step across processes.
    with store.lock, home_lock(store.home, "claim"):
        return _claim_run(store, request, engine, base_seed, identity)


def _claim_run(store, request, engine: str, base_seed: int, identity: str) -> tuple[str, int, RunLock, bool]:
    request_sha = store.request_sha(request, identity or engine)
    candidates = store.db.query(
        "select id from runs where request_sha = ? and status in (?, ?) order by created", [request_sha, *UNFINISHED]
    )
    for row in list(candidates):
        lock = RunLock(store.home, row["id"])
        if not lock.acquire():
            if request.seed is not None:
                # The same seeds would render the same images twice: say whose run it is.
                owner = lock.owner_pid()
                raise ReverieError(
                    f"this exact request (--seed {request.seed}) is being made right now as run {row['id']}"
                    f"{f' by process {owner}' if owner else ''}: follow it with `reverie show {row['id']}`, "
                    f"or pass another --seed")
            continue  # another process is making it right now; without a seed, a new run explores new seeds
        run = store.get_run(row["id"])
        if run["status"] in UNFINISHED:  # re-read under the lock: it may have finished meanwhile
            with store.db.conn:
                store.db["runs"].update(run["id"], {"status": "running", "owner_pid": os.getpid(), "finished": None})
            return run["id"], int(run["base_seed"]), lock, True
        lock.release()
    run_id = new_run_id()
    lock = RunLock(store.home, run_id)
    lock.acquire()  # before the row exists, so nobody can see it unowned
    store.create_run(request, engine, base_seed, run_id=run_id, identity=identity)
    with store.db.conn:
        store.db["runs"].update(run_id, {"owner_pid": os.getpid()})
    return run_id, base_seed, lock, False


def hold_run(store, run_id: str) -> tuple[dict, RunLock]:
    """Take the lock of a known run (a batch item's, by the id its row holds): a run not done
    (unfinished, or failed and tried again) is marked running by this process. Returns (its row, the lock); a run that another live
    process holds is one line naming it."""
    with store.lock, home_lock(store.home, "claim"):
        run = store.get_run(run_id)
        lock = RunLock(store.home, run["id"])
        if not lock.acquire():
            owner = lock.owner_pid()
            raise ReverieError(f"run {run['id']} is being made right now{f' by process {owner}' if owner else ''}: "
                               f"follow it with `reverie show {run['id']}`, or let it finish")
        if run["status"] != "done":
            with store.db.conn:
                store.db["runs"].update(run["id"], {"status": "running", "owner_pid": os.getpid(), "finished": None})
            run = {**run, "status": "running"}
        return run, lock


# -- files a crash left behind ---------------------------------------------------------------

def clean_temp_files(images_dir: Path) -> list[Path]:
    """Remove `.name.PID.tmp` files whose writer is dead (atomic_write's leftovers)."""
    removed = []
    for tmp in Path(images_dir).glob("*/.*.tmp"):
        try:
            pid = int(tmp.name.rsplit(".", 2)[-2])
        except ValueError:
            pid = -1
        if pid > 0 and pid_alive(pid):
            continue  # its writer is still at work (or is us)
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def sweep_orphans(store, run_id: str) -> dict[str, list[str]]:
    """Adopt the image files this run wrote before a crash whose rows never committed.

    A render PNG carries its own recipe, so such a file is recorded as the render it is. The
    sweep touches only files of `run_id` (the run this process holds), written since that run
    began; it never deletes an image: files of other runs, of runs this database does not know
    (a database moved aside, a PNG copied in from another home) and foreign PNGs stay as they are.
    Dead writers' `.tmp` leftovers (reverie's own partial writes) are removed.
    """
    report: dict[str, list[str]] = {"adopted": [], "temp_removed": []}
    report["temp_removed"] = [str(p) for p in clean_temp_files(store.images_dir)]
    run = store.get_run(run_id)
    since = float(run["created"] or 0.0) - 5.0  # file clocks and time.time() may differ a little
    known = store.known_image_paths()
    for file in sorted(Path(store.images_dir).glob("*/*.png")):
        rel = str(file.relative_to(store.home))
        if rel in known:
            continue
        try:
            if file.stat().st_mtime < since:
                continue  # older than the run: not its file
            meta = read_reverie_meta(file)
        except Exception:
            continue
        if not meta or meta.get("run_id") != run_id or "spec" not in meta:
            continue
        if not store.has_prompt(run_id, meta.get("prompt_id")):
            continue
        spec = RenderSpec.from_dict(meta["spec"])
        if store.find_render(run_id, spec) is None and file_sha256(file) == file.stem:
            store.adopt_render(meta, rel, file.stem)
            report["adopted"].append(rel)
    return report


def missing_files(store, run_id: str) -> list[dict]:
    """ok rows of a run whose file is gone or no longer hashes to its sha256."""
    bad = []
    for row in store.render_rows(run_id):
        if row["status"] != "ok":
            continue
        path = store.home / row["path"]
        if not path.exists() or file_sha256(path) != row["sha256"]:
            bad.append(row)
    return bad


def rerender_missing(store, run_id: str, render: Callable[[list[RenderSpec]], list[EngineOutput]],
                     batch_size: Callable[[], Optional[int]] = lambda: None) -> list[int]:
    """Render again every ok row of the run whose file is missing, and point the row at it."""
    rows = missing_files(store, run_id)
    if not rows:
        return []
    for row in rows:
        spec = RenderSpec.from_dict(json.loads(row["spec_json"]))
        # Pixels depend on how many seeds shared the forward pass (never on which): filler seeds
        # re-create the recorded batch, so the file comes back with the same bytes and hash.
        shape = row.get("batch_size") or batch_size() or 1
        output = render([spec] + [spec.with_(seed=spec.seed + 1 + i) for i in range(shape - 1)])[0]
        # Asked after rendering: an engine learns its batch size when it loads.
        store.replace_image(row["id"], output, batch_size=batch_size())
    return [r["id"] for r in rows]
