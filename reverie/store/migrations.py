"""Numbered migrations, recorded in the `_migrations` table (the `llm` CLI's pattern).

Append new migrations at the end; never edit one that has shipped.
"""

from __future__ import annotations

import time
from typing import Callable

import sqlite_utils

MIGRATIONS: list[tuple[str, Callable[[sqlite_utils.Database], None]]] = []


def migration(fn: Callable[[sqlite_utils.Database], None]):
    MIGRATIONS.append((fn.__name__, fn))
    return fn


@migration
def m001_initial(db: sqlite_utils.Database) -> None:
    db["runs"].create(
        {
            "id": str,
            "idea": str,
            "request_json": str,
            "request_sha": str,
            "profile": str,
            "engine": str,
            "base_seed": int,
            "status": str,  # running | done | failed | interrupted
            "stop_reason": str,
            "created": float,
            "finished": float,
        },
        pk="id",
    )
    db["prompts"].create(
        {
            "id": int,
            "run_id": str,
            "parent_id": int,
            "round": int,
            "text": str,
            "negative": str,
            "text_sha": str,
            "source": str,  # user | dreamer | formula | critic
            "model": str,
            "system_hash": str,
            "reason": str,
            "created": float,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id"), ("parent_id", "prompts", "id")],
    )
    db["renders"].create(
        {
            "id": int,
            "run_id": str,
            "prompt_id": int,
            "round": int,
            "seed": int,
            "spec_json": str,
            "spec_sha": str,
            "sha256": str,
            "path": str,
            "width": int,
            "height": int,
            "engine": str,
            "engine_version": str,
            "seconds": float,
            "status": str,  # ok | failed
            "error": str,
            "created": float,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id"), ("prompt_id", "prompts", "id")],
    )
    db["scores"].create(
        {"id": int, "render_id": int, "name": str, "value": float, "scorer": str},
        pk="id",
        foreign_keys=[("render_id", "renders", "id")],
    )
    db["prompts"].create_index(["run_id"])
    db["renders"].create_index(["run_id"])
    # A spec is rendered at most once per run: a resumed run finds it instead of redoing it.
    db["renders"].create_index(["run_id", "spec_sha"], unique=True)
    db["scores"].create_index(["render_id", "name"], unique=True)
    db["runs"].create_index(["request_sha"])


def migrate(db: sqlite_utils.Database) -> list[str]:
    """Apply every migration not yet recorded; return the names applied now."""
    if "_migrations" not in db.table_names():
        db["_migrations"].create({"name": str, "applied_at": float}, pk="name")
    done = {row["name"] for row in db["_migrations"].rows}
    applied = []
    # Numbered names sort into order wherever in the file (or package) they are defined.
    for name, fn in sorted(MIGRATIONS):
        if name in done:
            continue
        with db.conn:
            fn(db)
            db["_migrations"].insert({"name": name, "applied_at": time.time()})
        applied.append(name)
    return applied
