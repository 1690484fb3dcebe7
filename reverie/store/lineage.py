"""How one image came to be: idea -> expansion -> critic revisions -> spec -> image -> scores,
and the chat turn or batch item that asked for it."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, Optional

from PIL import Image

from reverie.store.pngmeta import file_sha256, read_metadata
from reverie.types import ReverieError


def check_regular_file(path: str | os.PathLike) -> None:
    """A folder, a device (/dev/zero) or a pipe is refused at once: hashing one never ends."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise ReverieError(f"cannot read {path} ({e.strerror}): give an image path, a render id or a sha prefix") from None
    if stat.S_ISDIR(mode):
        raise ReverieError(f"{path} is a folder: give an image file, a render id or a sha prefix")
    if not stat.S_ISREG(mode):
        raise ReverieError(f"{path} is not a regular file (a device, pipe or socket): give an image file")


def image_chunks(path: str | os.PathLike) -> dict[str, Optional[str]]:
    """The text chunks of an image file, with one clear line for anything that is not a sound image.

    Pillow's decompression-bomb guard refuses huge images (a 20000x20000 header) before any
    pixels are allocated.
    """
    p = Path(path)
    check_regular_file(p)
    try:
        return read_metadata(p)
    except Image.DecompressionBombError:
        raise ReverieError(f"{path} claims to be a gigantic image (a decompression bomb?): reverie will not open it") from None
    except Image.UnidentifiedImageError:
        raise ReverieError(f"{path} is not an image reverie can read: give a PNG (or JPEG/WebP) file") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ReverieError(f"{path} is a damaged image ({e}): use an intact copy") from None


def _locked(fn):
    """Under the store's lock: its one connection is shared with the run threads (see db.locked)."""
    import functools

    @functools.wraps(fn)
    def wrapper(store, *args, **kwargs):
        with store.lock:
            return fn(store, *args, **kwargs)

    return wrapper


@_locked
def find_renders(store, key: str) -> list[dict]:
    """Render rows for a render id, an image path (by the file's sha256, then by its `reverie`
    chunk), or a prefix of an image sha256 or spec hash."""
    key = str(key).strip()
    if os.path.lexists(key):
        check_regular_file(key)
        rows = list(store.db.query("select * from renders where sha256 = ?", [file_sha256(Path(key))]))
        if rows:
            return rows
        raw = image_chunks(key).get("reverie")
        if raw:
            meta = json.loads(raw)
            return list(store.db.query("select * from renders where run_id = ? and spec_sha = ?",
                                       [meta.get("run_id"), meta.get("spec_sha")]))
        return []
    if key.isdigit():
        rows = list(store.db.query("select * from renders where id = ?", [int(key)]))
        if rows or len(key) < 6:
            return rows
        # No render has that id: six or more digits may be a hash prefix that has no letter in it.
    if len(key) >= 6 and all(c in "0123456789abcdef" for c in key.lower()):
        # A prefix as an index range (every hex digit sorts below "g"); LIKE would walk every row.
        lo, hi = key.lower(), key.lower() + "g"
        return list(store.db.query("select * from renders where (sha256 >= ? and sha256 < ?) or (spec_sha >= ? and spec_sha < ?) "
                                   "order by id", [lo, hi, lo, hi]))
    raise ReverieError(f"{key!r} is not a render id, an existing image file or a sha prefix (6+ hex characters)")


@_locked
def prompt_chain(store, prompt_id: int) -> list[dict]:
    """The prompt a render used and its ancestors, oldest (the first expansion) first."""
    rows = store.db.query(
        """with recursive chain(id, depth) as (
             select id, 0 from prompts where id = ?
             union all
             select p.parent_id, chain.depth + 1 from prompts p join chain on p.id = chain.id
              where p.parent_id is not null)
           select prompts.* from chain join prompts on prompts.id = chain.id order by chain.depth desc""",
        [prompt_id],
    )
    return [dict(r) for r in rows]


@_locked
def caused_by(store, run_id: str) -> Optional[dict[str, Any]]:
    """The chat turn or batch item that started this run, when those tables exist."""
    tables = set(store.db.table_names())
    if "chat_turns" in tables:
        rows = list(store.db.query(
            """select t.id, t.turn, t.message, s.name as session from chat_turns t
               left join chat_sessions s on s.id = t.session_id where t.run_id = ?""", [run_id]))
        if rows:
            return {"kind": "chat_turn", **rows[0]}
    if "batch_items" in tables:
        rows = list(store.db.query(
            """select i.id, i.idx, i.idea, i.batch_id, b.source from batch_items i
               left join batches b on b.id = i.batch_id where i.run_id = ?""", [run_id]))
        if rows:
            return {"kind": "batch_item", **rows[0]}
    return None


@_locked
def edit_chain(store, row: dict) -> list[dict[str, Any]]:
    """The image parents of an edit, oldest first: the first source (a file from outside, known by
    its sha256, or a render of this home that was not itself an edit), then each edit made from it,
    up to this render's own source. Empty for a render that is not an edit."""
    chain: list[dict[str, Any]] = []
    seen = {row["id"]}
    current = row
    while current.get("source_sha"):
        parent_id = current.get("source_render_id")
        parent = store.db["renders"].get(parent_id) if parent_id is not None and parent_id not in seen else None
        if parent is None:
            chain.append({"render_id": None, "sha256": current["source_sha"], "instruction": None, "origin": "file"})
            break
        seen.add(parent_id)
        chain.append({"render_id": parent_id, "sha256": parent["sha256"], "run_id": parent["run_id"],
                      "instruction": parent.get("instruction"), "origin": "render",
                      "path": str(store.home / parent["path"]) if parent["path"] else None})
        current = parent
    return chain[::-1]


@_locked
def lineage(store, row: dict) -> dict[str, Any]:
    # The row holds the exact run id; get_run's prefix matching would walk every run.
    with store.lock:
        run = next(store.db.query("select * from runs where id = ?", [row["run_id"]]))
    scores = store.scores_for(row["id"])
    path = store.home / row["path"] if row["path"] else None
    return {
        "run": {k: run[k] for k in ("id", "idea", "status", "profile", "engine", "base_seed", "created")},
        "request": json.loads(run["request_json"]),
        # Rounds count from 1 here, as everywhere a person reads them; the store counts from 0.
        "prompts": [{**{k: p[k] for k in ("id", "parent_id", "source", "text", "negative", "text_sha", "model",
                                          "system_hash", "reason")}, "round": p["round"] + 1}
                    for p in prompt_chain(store, row["prompt_id"])],
        "spec": json.loads(row["spec_json"]),
        "spec_sha": row["spec_sha"],
        "render": {
            "id": row["id"],
            "status": row["status"],
            "error": row["error"],
            "seed": row["seed"],
            "round": row["round"] + 1,
            "engine": row["engine"],
            "engine_version": row["engine_version"],
            "worker": row.get("worker") or "",
            "seconds": row["seconds"],
            "path": str(path) if path else None,
            "sha256": row["sha256"],
            "file_ok": bool(path and path.exists() and file_sha256(path) == row["sha256"]),
        },
        "scores": ({**scores.values, "composite": scores.composite, "scorer": scores.scorer} if scores else None),
        # Which weighting made the composite: "default", or "taste N" learnt from the person's picks.
        "weighting": (scores.details.get("weighting") or "default") if scores else None,
        "caused_by": caused_by(store, row["run_id"]),
        # An edit: what it was asked to change, and the chain of images it came from.
        "edit": ({"instruction": row.get("instruction"), "source_sha": row["source_sha"],
                  "source_render_id": row.get("source_render_id"), "chain": edit_chain(store, row)}
                 if row.get("source_sha") else None),
    }
