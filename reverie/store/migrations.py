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


@migration
def m002_llm_calls_and_controls(db: sqlite_utils.Database) -> None:
    # run_id is null for calls made outside a run (`reverie expand`).
    db["llm_calls"].create(
        {
            "id": int,
            "run_id": str,
            "purpose": str,  # expand | critique | models
            "model": str,
            "base_url": str,
            "system_hash": str,
            "request_json": str,
            "response_text": str,
            "seconds": float,
            "prompt_tokens": int,
            "completion_tokens": int,
            "ok": int,
            "error": str,
            "created": float,
        },
        pk="id",
    )
    db["llm_calls"].create_index(["run_id"])
    db["controls"].create(
        {
            "id": int,
            "run_id": str,
            "kind": str,  # canny | depth | pose | img2img
            "source_path": str,
            "source_sha": str,
            "image_sha": str,
            "image_path": str,
            "created": float,
        },
        pk="id",
    )
    db["controls"].create_index(["run_id"])


@migration
def m003_run_owner_and_image_index(db: sqlite_utils.Database) -> None:
    # Which process holds a run (shown to users; the flock in store/recovery.py is the guard),
    # and how renders are found from an image file's sha256 (`reverie lineage IMAGE.png`).
    db["runs"].add_column("owner_pid", int)
    db["renders"].create_index(["sha256"])
    db["prompts"].create_index(["text_sha"])


@migration
def m004_batches_and_chats(db: sqlite_utils.Database) -> None:
    # A batch is identified by the hash of its file content and options: the same command
    # finds the same row and continues it.
    db["batches"].create(
        {
            "id": str,
            "source": str,  # the file as given
            "options_json": str,
            "status": str,  # running | done | interrupted
            "seconds_spent": float,  # active time summed over sessions, for --hours
            "report_path": str,
            "created": float,
            "finished": float,
        },
        pk="id",
    )
    db["batch_items"].create(
        {
            "id": int,
            "batch_id": str,
            "idx": int,
            "idea": str,
            "overrides_json": str,
            "budget": int,  # renders this item may use
            "base_seed": int,
            "run_id": str,  # the lineage run that holds its prompts, renders and scores
            "status": str,  # pending | running | done
        },
        pk="id",
        foreign_keys=[("batch_id", "batches", "id"), ("run_id", "runs", "id")],
    )
    db["batch_items"].create_index(["batch_id", "idx"], unique=True)
    db["batch_items"].create_index(["run_id"])
    db["batch_keeps"].create(
        {"id": int, "item_id": int, "render_id": int, "rank": int, "near_duplicate": int},
        pk="id",
        foreign_keys=[("item_id", "batch_items", "id"), ("render_id", "renders", "id")],
    )
    db["batch_keeps"].create_index(["item_id", "rank"], unique=True)
    db["chat_sessions"].create({"id": int, "name": str, "created": float, "updated": float}, pk="id")
    db["chat_sessions"].create_index(["name"], unique=True)
    db["chat_turns"].create(
        {
            "id": int,
            "session_id": int,
            "turn": int,  # 1-based within the session
            "message": str,
            "interpretation_json": str,  # how the message was read: rules or LLM, and what changed
            "request_json": str,
            "run_id": str,
            "parent_turn_id": int,  # the turn this one starts from
            "parent_run_id": str,
            "ref_render_id": int,  # "the second one": the render the follow-up points at
            "created": float,
        },
        pk="id",
        foreign_keys=[("session_id", "chat_sessions", "id"), ("run_id", "runs", "id"),
                      ("parent_turn_id", "chat_turns", "id"), ("ref_render_id", "renders", "id")],
    )
    db["chat_turns"].create_index(["session_id", "turn"], unique=True)
    db["chat_turns"].create_index(["run_id"])


@migration
def m005_batch_item_errors(db: sqlite_utils.Database) -> None:
    # A batch item that failed (no weights for its profile, a broken reference) is marked
    # status 'failed' with its one-line reason; the rest of the batch goes on, and the same
    # command retries it.
    db["batch_items"].add_column("error", str)


@migration
def m006_render_worker(db: sqlite_utils.Database) -> None:
    # Which machine made each render: a ComfyUI server's URL and version (a pool spreads one run
    # over several), or "local" for the in-process engines. Older rows stay empty: unknown.
    db["renders"].add_column("worker", str)


@migration
def m007_picks(db: sqlite_utils.Database) -> None:
    # A person's choices: pick (keep, like) or reject, from the CLI, chat or the web studio.
    # Every choice is kept (history); the newest per render is what it stands at. Taste is
    # learned from these against the scores each render had.
    db["picks"].create(
        {"id": int, "render_id": int, "choice": str, "source": str, "note": str, "created": float},
        pk="id", foreign_keys=[("render_id", "renders", "id")],
    )
    db["picks"].create_index(["render_id", "created"])


@migration
def m008_batch_item_crashes(db: sqlite_utils.Database) -> None:
    # The round of an item that was in the engine when the process died (segfault, OOM kill),
    # and how many such crashes in a row: an item in flight at two is quarantined as failed.
    db["batch_items"].add_column("inflight_round", int)
    db["batch_items"].add_column("crashes", int)


@migration
def m010_lineage_indexes(db: sqlite_utils.Database) -> None:
    # `reverie runs` sorts by creation time and stops after a page: with this index SQLite walks
    # the newest runs only, instead of computing every run's counts and best score to sort them.
    db["runs"].create_index(["created"])
    # `reverie lineage PREFIX` matches image hashes and spec hashes by prefix (as index ranges).
    db["renders"].create_index(["spec_sha"])
    # How many seeds shared the forward pass that made a render: its pixels depend on that, so
    # re-rendering a lost file re-creates it (null for renders made before it was recorded).
    db["renders"].add_column("batch_size", int)


@migration
def m011_taste(db: sqlite_utils.Database) -> None:
    # Weightings learnt from a person's picks (`reverie taste`), one row per fit; the newest
    # active row of a scorer family is what its composite uses until `reverie taste --reset`.
    db["tastes"].create(
        {"id": int, "family": str, "weights_json": str, "picks": int, "rejects": int, "agreement": float,
         "default_agreement": float, "active": int, "created": float},
        pk="id",
    )
    # Which weighting made each composite ("default" or "taste N"), so a score stays explainable.
    db["scores"].add_column("weighting", str)


@migration
def m012_vlm_judge(db: sqlite_utils.Database) -> None:
    # The render a vision judge chose among a run's top candidates when it stopped, and why:
    # it leads the run's final pick.
    db["runs"].add_column("judge_pick", int)
    db["runs"].add_column("judge_note", str)


@migration
def m013_serve_requests(db: sqlite_utils.Database) -> None:
    # Requests `reverie serve` accepted: each becomes a run, and one still open when the server
    # died is finished by the next server on this home. `keep` = finish it even if the client
    # that asked hangs up.
    db["serve_requests"].create(
        {
            "id": int,
            "kind": str,  # images (the OpenAI endpoint) | chat (a turn of the web studio)
            "payload_json": str,  # what to run again after a restart, seed included
            "keep": int,
            "status": str,  # accepted | running | done | failed | cancelled
            "run_id": str,
            "error": str,
            "created": float,
            "finished": float,
        },
        pk="id",
    )
    db["serve_requests"].create_index(["status"])


@migration
def m014_llm_call_backend(db: sqlite_utils.Database) -> None:
    # What wrote an answer (server, encoder, local, textgen) and the seed a local model sampled
    # with: with the model and the token counts, enough to write the same answer again.
    db["llm_calls"].add_column("backend", str)
    db["llm_calls"].add_column("seed", int)


@migration
def m015_batch_item_death_evidence(db: sqlite_utils.Database) -> None:
    # What a batch knows of a round in the engine (its fault log, the kernel's OOM-kill count)
    # and where the last counted crash was: a kill from outside is then told from a crash.
    db["batch_items"].add_column("inflight_json", str)
    db["batch_items"].add_column("last_crash_json", str)


@migration
def m016_edit_sources(db: sqlite_utils.Database) -> None:
    # An edit's image parent: the render it started from (a render of this home), or only the
    # sha256 of a file from outside; and the instruction it was given. Indexed both ways so
    # `lineage` walks a chain of edits and a source's edits are one lookup.
    db["renders"].add_column("source_render_id", int)
    db["renders"].add_column("source_sha", str)
    db["renders"].add_column("instruction", str)
    db["renders"].create_index(["source_render_id"])
    db["renders"].create_index(["source_sha"])


def migrate(db: sqlite_utils.Database) -> list[str]:
    """Apply every migration not yet recorded, all in one transaction; return the names applied now.

    `BEGIN IMMEDIATE` takes the database's write lock before reading what is done, so a second
    process opening a new home waits for the first and then finds nothing left to do; DDL inside
    the transaction (sqlite-utils nests its own writes as savepoints) means a process killed
    half-way leaves no half-made schema behind: the next open starts from where it was.
    """
    if pending(db) == []:  # the common case: a plain read, no write lock taken
        return []
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        if "_migrations" not in db.table_names():
            db["_migrations"].create({"name": str, "applied_at": float}, pk="name")
        applied = []
        for name, fn in pending(db):
            fn(db)
            db["_migrations"].insert({"name": name, "applied_at": time.time()})
            applied.append(name)
        db.conn.execute("COMMIT")
    except BaseException:
        if db.conn.in_transaction:
            db.conn.execute("ROLLBACK")
        raise
    return applied


def pending(db: sqlite_utils.Database) -> list[tuple[str, Callable[[sqlite_utils.Database], None]]]:
    done = {row["name"] for row in db["_migrations"].rows} if "_migrations" in db.table_names() else set()
    # Numbered names sort into order wherever in the file (or package) they are defined.
    return [(name, fn) for name, fn in sorted(MIGRATIONS) if name not in done]
