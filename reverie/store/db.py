"""The lineage store: one SQLite file (WAL) and a folder of content-addressed PNGs."""

from __future__ import annotations

import json
import os
import secrets
import functools
import itertools
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Optional

import sqlite_utils

from reverie.store.locks import RunLock, home_lock
from reverie.store.migrations import pending, migrate
from reverie.store.pngmeta import a1111_parameters, cfg_scale, encode_png, write_image
from reverie.types import (
    EngineOutput,
    Expansion,
    Render,
    RenderSpec,
    Request,
    ReverieError,
    Scores,
    canonical_json,
    sha256_text,
)


def stored_round(meta: dict) -> int:
    """The store's 0-based round of a PNG's `reverie` chunk (format 2 writes it 1-based)."""
    rnd = int(meta.get("round") or 0)
    return max(rnd - 1, 0) if int(meta.get("format", 1)) >= 2 else rnd


def new_run_id() -> str:
    # Sortable by time, unique across processes.
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def locked(method):
    """Hold the store's lock for the whole method: one sqlite3 connection serves every thread.

    Reads too: sqlite-utils runs every query inside a SAVEPOINT, which opens a transaction on
    the shared connection, so an unlocked read can collide with another thread's write."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self.lock:
            return method(self, *args, **kwargs)

    return wrapper


class Store:
    def __init__(self, home: str | os.PathLike, busy_timeout: Optional[float] = None, read_only_ok: bool = False):
        """Open (or create) the home's database.

        `read_only_ok`: for commands that only read (runs, show, lineage, export): a home on a
        read-only disk (a mounted backup, another user's folder) opens read-only instead of
        being refused; `self.read_only` says which.
        """
        self.home = Path(home).expanduser()
        self.read_only = False
        # The render node stores and scores on a worker thread while the engine renders; every
        # method that touches the connection holds this (reentrant) lock, reads included.
        self.lock = threading.RLock()
        try:
            self.home.mkdir(parents=True, exist_ok=True)
            self.images_dir.mkdir(exist_ok=True)
            probe = self.home / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            if read_only_ok and self.db_path.is_file():
                self._open_read_only()
                return
            raise ReverieError(
                f"cannot write to home {self.home} ({e.strerror or e}): pass --home DIR or set REVERIE_HOME to a writable folder"
            ) from None
        # How long to wait for another process's write lock; REVERIE_BUSY_TIMEOUT (seconds) tunes it.
        busy = busy_timeout if busy_timeout is not None else float(os.environ.get("REVERIE_BUSY_TIMEOUT", "30"))
        try:
            conn = sqlite3.connect(str(self.db_path), timeout=busy, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={int(busy * 1000)}")
            # Switching a new file to WAL and creating the schema are done by one process at a
            # time: SQLite answers some of those lock conflicts with "locked" at once, without
            # waiting for the busy timeout.
            with home_lock(self.home, "store-open"):
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA foreign_keys=ON")
                self.db = sqlite_utils.Database(conn)
                migrate(self.db)
        except sqlite3.DatabaseError as e:
            if "locked" in str(e) or "busy" in str(e):
                raise ReverieError(
                    f"the database {self.db_path} is locked by another program (waited {busy:g}s): let it finish, or set REVERIE_BUSY_TIMEOUT to wait longer"
                ) from None
            raise ReverieError(
                f"the database {self.db_path} is unusable ({e}): move it aside and run again, or use another --home"
            ) from None

    def _open_read_only(self) -> None:
        """Read a database nobody can write here. A WAL database needs its -shm file, which a
        read-only folder cannot hold, so it is opened as immutable: no process is writing it."""
        self.read_only = True
        uri = f"{self.db_path.resolve().as_uri()}?mode=ro&immutable=1"
        try:
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
            self.db = sqlite_utils.Database(conn)
            todo = pending(self.db)
        except sqlite3.DatabaseError as e:
            raise ReverieError(f"the database {self.db_path} is unusable ({e}): copy the home somewhere writable "
                               f"and pass --home DIR") from None
        if todo:
            raise ReverieError(f"the database {self.db_path} is from an older reverie and this home is read-only: "
                               f"copy it somewhere writable and pass --home DIR (it is upgraded on first use)")

    @functools.cached_property
    def batches(self):
        from reverie.store.batches import Batches

        return Batches(self)

    @functools.cached_property
    def chats(self):
        from reverie.store.chats import Chats

        return Chats(self)

    @functools.cached_property
    def picks(self):
        from reverie.store.picks import Picks

        return Picks(self)

    @functools.cached_property
    def tastes(self):
        from reverie.store.tastes import Tastes

        return Tastes(self)

    @property
    def db_path(self) -> Path:
        return self.home / "reverie.db"

    @property
    def images_dir(self) -> Path:
        return self.home / "images"

    @locked
    def close(self) -> None:
        self.db.conn.close()

    # -- runs ------------------------------------------------------------------------------
    @locked
    def create_run(self, request: Request, engine: str, base_seed: int, run_id: Optional[str] = None,
                   identity: str = "") -> str:
        run_id = run_id or new_run_id()
        req_json = canonical_json(request.to_dict())
        with self.db.conn:
            self.db["runs"].insert(
                {
                    "id": run_id,
                    "idea": request.idea,
                    "request_json": req_json,
                    "request_sha": self.request_sha(request, identity or engine),
                    "profile": request.profile,
                    "engine": engine,
                    "base_seed": base_seed,
                    "status": "running",
                    "stop_reason": "",
                    "created": time.time(),
                    "finished": None,
                }
            )
        return run_id

    @staticmethod
    def request_sha(request: Request, identity: str) -> str:
        """The same command on the same engine identity (weights, model files) gives the same
        hash: that is how a rerun finds the run to continue."""
        return sha256_text(canonical_json(request.to_dict()) + "|" + identity)

    @locked
    def finish_run(self, run_id: str, status: str, stop_reason: str) -> None:
        with self.db.conn:
            self.db["runs"].update(run_id, {"status": status, "stop_reason": stop_reason, "finished": time.time()})

    @locked
    def get_run(self, run_id: str) -> dict:
        rows = list(self.db.query("select * from runs where id = ? or id like ? order by created desc", [run_id, run_id + "%"]))
        if not rows:
            raise ReverieError(f"no run {run_id!r} in {self.db_path}: `reverie runs` lists the runs")
        if len(rows) > 1 and rows[0]["id"] != run_id:
            raise ReverieError(f"run id {run_id!r} is ambiguous: give more characters")
        return self._honest_status(rows[0])

    @locked
    def list_runs(self, limit: int = 50) -> list[dict]:
        rows = self.db.query(
            """select runs.*,
                 (select count(*) from renders where renders.run_id = runs.id and status = 'ok') as renders,
                 (select max(s.value) from scores s join renders r on r.id = s.render_id
                   where r.run_id = runs.id and s.name = 'composite') as best,
                 (select s.scorer from scores s join renders r on r.id = s.render_id
                   where r.run_id = runs.id and s.name = 'composite' order by s.value desc limit 1) as best_scorer
               from runs order by created desc limit ?""",
            [limit],
        )
        return [self._honest_status(r) for r in rows]

    def _honest_status(self, run: dict) -> dict:
        """A run marked running whose process is gone (killed, crashed) is shown as interrupted."""
        try:
            gone = run.get("status") == "running" and not RunLock(self.home, run["id"]).held_elsewhere()
        except OSError:  # a read-only home: the lock cannot be probed, the row is all we know
            gone = False
        if gone:
            return {**run, "status": "interrupted",
                    "stop_reason": run.get("stop_reason") or "its process ended; run the same command to continue"}
        return run

    # -- prompts ---------------------------------------------------------------------------
    @locked
    def add_prompt(self, run_id: str, expansion: Expansion, round: int, parent_id: Optional[int] = None) -> int:
        with self.db.conn:
            table = self.db["prompts"].insert(
                {
                    "run_id": run_id,
                    "parent_id": parent_id,
                    "round": round,
                    "text": expansion.prompt,
                    "negative": expansion.negative,
                    "text_sha": sha256_text(expansion.prompt + "\x00" + expansion.negative),
                    "source": expansion.source,
                    "model": expansion.model,
                    "system_hash": expansion.system_hash,
                    "reason": expansion.reason,
                    "created": time.time(),
                }
            )
        return int(table.last_pk)

    @locked
    def prompts(self, run_id: str) -> list[dict]:
        return list(self.db.query("select * from prompts where run_id = ? order by id", [run_id]))

    @locked
    def prompt(self, prompt_id: int) -> dict:
        return self.db["prompts"].get(prompt_id)

    @locked
    def round_prompt(self, run_id: str, round: int) -> Optional[dict]:
        """The latest prompt committed for this round of the run, or None (a resumed run reuses it)."""
        return next(self.db.query("select * from prompts where run_id = ? and round = ? order by id desc limit 1",
                                  [run_id, round]), None)

    # -- renders ---------------------------------------------------------------------------
    @locked
    def known_image_paths(self) -> set[str]:
        """Every image path a row points at (renders and control images), relative to home."""
        known = {r["path"] for r in self.db.query("select path from renders where path is not null")}
        return known | {r["image_path"] for r in self.db.query("select image_path from controls")}

    @locked
    def has_prompt(self, run_id: str, prompt_id: Any) -> bool:
        return bool(list(self.db.query("select 1 from prompts where id = ? and run_id = ?", [prompt_id, run_id])))

    @locked
    def find_render(self, run_id: str, spec: RenderSpec) -> Optional[dict]:
        rows = list(self.db.query("select * from renders where run_id = ? and spec_sha = ?", [run_id, spec.sha]))
        return rows[0] if rows else None

    def add_render(self, run_id: str, prompt_id: int, round: int, output: EngineOutput,
                   batch_size: Optional[int] = None) -> int:
        """Write the PNG (atomically, content-addressed) and then the row that points at it.

        batch_size is the engine's batch at render time; `reproduce` needs it, because padded
        batches of another size round differently. Blank (NaN or all-black) images are recorded
        as failed, so they are never ranked.
        """
        spec = output.spec
        path, sha = None, None
        error = output.error or (blank_image_error(output.image) if output.image is not None else "")
        status = "ok" if output.image is not None and not error else "failed"
        if status == "ok":
            path, sha = self._write_render_png(run_id, prompt_id, round, output, batch_size)
        # The PNG is encoded and written outside the lock, so readers wait only for the row.
        with self.lock, self.db.conn:
            table = self.db["renders"].insert(
                {
                    "run_id": run_id,
                    "prompt_id": prompt_id,
                    "round": round,
                    "seed": spec.seed,
                    "spec_json": spec.to_json(),
                    "spec_sha": spec.sha,
                    "sha256": sha,
                    "path": path,
                    "width": spec.width,
                    "height": spec.height,
                    "engine": output.engine,
                    "engine_version": output.engine_version,
                    "worker": output.worker or "local",
                    "seconds": output.seconds,
                    "status": status,
                    "error": error,
                    "created": time.time(),
                    "batch_size": output.batch_size or batch_size,
                    **edit_columns(spec),
                }
            )
        return int(table.last_pk)

    def _write_render_png(self, run_id: str, prompt_id: int, round: int, output: EngineOutput,
                          batch_size: Optional[int]) -> tuple[str, str]:
        spec = output.spec
        meta = {
            # Format 2: rounds count from 1, as people read them everywhere (format 1 counted from 0).
            "format": 2,
            "run_id": run_id,
            "prompt_id": prompt_id,
            "round": round + 1,
            "spec": spec.to_dict(),
            "spec_sha": spec.sha,
            "engine": output.engine,
            "engine_version": output.engine_version,
            # The shape the engine actually used (a run's last batch may be smaller) wins over its setting.
            "batch_size": output.batch_size or batch_size,
            "model": output.model or spec.profile,
            "model_hash": output.model_hash,
            "worker": output.worker or "local",
            "cfg": output.cfg if output.cfg is not None else cfg_scale(spec),
            "versions": {"reverie": _version(), **output.runtime},
        }
        parameters = a1111_parameters(spec, f"reverie {_version()}", model=output.model, model_hash=output.model_hash,
                                      engine=f"{output.engine} ({output.engine_version})", round=round + 1,
                                      cfg=output.cfg, worker=output.worker)
        data = encode_png(output.image, parameters, meta)
        sha, file_path = write_image(self.images_dir, data)
        return str(file_path.relative_to(self.home)), sha

    def replace_image(self, render_id: int, output: EngineOutput, batch_size: Optional[int] = None) -> None:
        """Point an existing row at a freshly rendered file (its old file went missing)."""
        row = self.render_row(render_id)
        path, sha = self._write_render_png(row["run_id"], row["prompt_id"], row["round"], output, batch_size)
        with self.lock, self.db.conn:
            self.db["renders"].update(render_id, {"path": path, "sha256": sha})

    @locked
    def render_row(self, render_id: int) -> dict:
        return self.db["renders"].get(render_id)

    @locked
    def adopt_render(self, meta: dict, path: str, sha: str) -> int:
        """Record a render whose file was written but whose row never committed (a crash)."""
        spec = RenderSpec.from_dict(meta["spec"])
        with self.db.conn:
            table = self.db["renders"].insert(
                {"run_id": meta["run_id"], "prompt_id": meta["prompt_id"], "round": stored_round(meta),
                 "seed": spec.seed, "spec_json": spec.to_json(), "spec_sha": spec.sha, "sha256": sha, "path": path,
                 "width": spec.width, "height": spec.height, "engine": meta.get("engine", ""),
                 "engine_version": meta.get("engine_version", ""), "seconds": 0.0, "status": "ok",
                 "error": "", "created": time.time(), "batch_size": meta.get("batch_size"), **edit_columns(spec)}
            )
        return int(table.last_pk)

    @locked
    def add_scores(self, render_id: int, scores: Scores) -> None:
        weighting = scores.details.get("weighting")  # "taste N" when a learnt weighting made the composite
        rows = [{"render_id": render_id, "name": k, "value": float(v), "scorer": scores.scorer, "weighting": weighting}
                for k, v in scores.values.items()]
        rows.append({"render_id": render_id, "name": "composite", "value": float(scores.composite), "scorer": scores.scorer,
                     "weighting": weighting})
        with self.db.conn:
            # Re-scoring a render replaces its values (unique index on render_id, name).
            self.db["scores"].insert_all(rows, replace=True)

    @locked
    def scores_for(self, render_id: int) -> Optional[Scores]:
        rows = list(self.db.query("select name, value, scorer, weighting from scores where render_id = ?", [render_id]))
        return scores_from(rows)

    @locked
    def run_scores(self, run_id: str) -> dict[int, Scores]:
        """Every scored render of the run: render id -> Scores, in one query."""
        rows = self.db.query("""select s.render_id, s.name, s.value, s.scorer, s.weighting from scores s
                                join renders r on r.id = s.render_id where r.run_id = ? order by s.render_id""", [run_id])
        return {rid: scores_from(list(group)) for rid, group in itertools.groupby(rows, key=lambda r: r["render_id"])}

    @locked
    def render_rows(self, run_id: str) -> list[dict]:
        return list(self.db.query("select * from renders where run_id = ? order by id", [run_id]))

    @locked
    def to_render(self, row: dict) -> Render:
        return self._render(row, self.scores_for(row["id"]))

    def _render(self, row: dict, scores: Optional[Scores]) -> Render:
        return Render(
            id=row["id"],
            run_id=row["run_id"],
            prompt_id=row["prompt_id"],
            round=row["round"],
            spec=RenderSpec.from_dict(json.loads(row["spec_json"])),
            path=str(self.home / row["path"]) if row["path"] else "",
            sha256=row["sha256"] or "",
            engine=row["engine"],
            seconds=row["seconds"],
            scores=scores,
        )

    def _renders_where(self, where: str, params: list) -> list[Render]:
        """Renders with their scores in one query: a render's score rows come out together
        (ordered by render id), so grouping them costs one pass and no query per render."""
        rows = self.db.query(
            f"""select renders.*, s.name as score_name, s.value as score_value, s.scorer as score_scorer,
                       s.weighting as score_weighting
                from renders left join scores s on s.render_id = renders.id
                where {where} order by renders.id""",
            params,
        )
        out = []
        for _, group in itertools.groupby(rows, key=lambda r: r["id"]):
            group = list(group)
            scores = scores_from([{"name": g["score_name"], "value": g["score_value"], "scorer": g["score_scorer"],
                                   "weighting": g["score_weighting"]} for g in group if g["score_name"] is not None])
            out.append(self._render(group[0], scores))
        return out

    @locked
    def render_path(self, render_id: int) -> str:
        return next(self.db.query("select path from renders where id = ?", [render_id]))["path"]

    @locked
    def render_by_id(self, render_id: int) -> Render:
        found = self._renders_where("renders.id = ?", [render_id])
        if not found:
            raise ReverieError(f"no render {render_id} in {self.db_path}")
        return found[0]

    @locked
    def renders_by_ids(self, render_ids, ok_only: bool = True) -> list[Render]:
        """The renders with these ids (any run), with their scores, in id order; unknown ids (and,
        as in renders(), failed renders unless ok_only=False) are left out."""
        ids = sorted({int(i) for i in render_ids})
        if not ids:
            return []
        where = f"renders.id in ({','.join('?' * len(ids))})" + (" and renders.status = 'ok'" if ok_only else "")
        return self._renders_where(where, ids)

    @locked
    def ok_count(self, run_id: str) -> int:
        return next(self.db.query("select count(*) as n from renders where run_id = ? and status = 'ok'", [run_id]))["n"]

    @locked
    def failed_reason(self, run_id: str) -> Optional[str]:
        """Why a run made no image (its first render error), or None when it made one."""
        if self.ok_count(run_id):
            return None
        row = next(self.db.query("select error from renders where run_id = ? and error != '' order by id limit 1",
                                 [run_id]), None)
        if row is not None:
            return row["error"]
        return "every render failed" if next(self.db.query("select 1 from renders where run_id = ? limit 1", [run_id]), None) else None

    @locked
    def renders(self, run_id: str, ok_only: bool = True) -> list[Render]:
        if ok_only:
            return self._renders_where("renders.run_id = ? and renders.status = 'ok'", [run_id])
        return self._renders_where("renders.run_id = ?", [run_id])

    @locked
    def best(self, run_id: str, k: int = 4) -> list[Render]:
        """The run's k best scored renders by composite (ties: the earlier first), ranked in SQL."""
        top = [r["id"] for r in self.db.query(
            """select renders.id from renders join scores c on c.render_id = renders.id and c.name = 'composite'
               where renders.run_id = ? and renders.status = 'ok' order by c.value desc, renders.id limit ?""",
            [run_id, int(k)])]
        ranked = self.renders_by_ids(top)
        ranked.sort(key=lambda r: (-r.scores.composite, r.id))
        return ranked

    @locked
    def composites(self, run_id: str) -> list[float]:
        """Every scored image's composite in this run, in render order (what early stopping reads)."""
        return [r["value"] for r in self.db.query(
            """select c.value from renders join scores c on c.render_id = renders.id and c.name = 'composite'
               where renders.run_id = ? and renders.status = 'ok' order by renders.id""", [run_id])]

    # -- LLM calls and control images ------------------------------------------------------
    @locked
    def set_judge_pick(self, run_id: str, render_id: int, note: str) -> None:
        with self.db.conn:
            self.db.execute("update runs set judge_pick = ?, judge_note = ? where id = ?", [int(render_id), note, run_id])

    @locked
    def judge_pick(self, run_id: str) -> Optional[dict]:
        """{"render_id", "note"} when a vision judge chose the run's final pick, else None."""
        row = next(self.db.query("select judge_pick, judge_note from runs where id = ?", [run_id]), None)
        if not row or row["judge_pick"] is None:
            return None
        return {"render_id": row["judge_pick"], "note": row["judge_note"] or ""}

    @locked
    def add_llm_call(self, call: dict, run_id: Optional[str] = None) -> int:
        """Record one LLM call (the dict the LLM client hands its record callback)."""
        keys = ("purpose", "model", "base_url", "system_hash", "request_json", "response_text", "seconds",
                "prompt_tokens", "completion_tokens", "ok", "error", "backend", "seed")
        row = {k: call.get(k) for k in keys}
        row.update(run_id=run_id, ok=int(bool(call.get("ok"))), created=time.time())
        with self.db.conn:
            return int(self.db["llm_calls"].insert(row).last_pk)

    @locked
    def llm_calls(self, run_id: Optional[str] = None) -> list[dict]:
        if run_id is None:
            return list(self.db.query("select * from llm_calls order by id"))
        return list(self.db.query("select * from llm_calls where run_id = ? order by id", [run_id]))

    def add_control(self, run_id: Optional[str], kind: str, source_path: str, source_sha: str, data: bytes) -> tuple[str, Path]:
        """Store a preprocessed control image content-addressed and link it to the run."""
        sha, path = write_image(self.images_dir, data)
        with self.lock, self.db.conn:
            self.db["controls"].insert({"run_id": run_id, "kind": kind, "source_path": source_path, "source_sha": source_sha,
                                        "image_sha": sha, "image_path": str(path.relative_to(self.home)),
                                        "created": time.time()})
        return sha, path

    @locked
    def controls(self, run_id: str) -> list[dict]:
        return list(self.db.query("select * from controls where run_id = ? order by id", [run_id]))

    # -- the tree --------------------------------------------------------------------------
    @locked
    def run_tree(self, run_id: str) -> dict[str, Any]:
        run = self.get_run(run_id)
        prompts = self.prompts(run["id"])
        renders = self.render_rows(run["id"])
        scores = self.run_scores(run["id"])
        by_prompt: dict[int, list[dict]] = {}
        for r in renders:
            s = scores.get(r["id"])
            by_prompt.setdefault(r["prompt_id"], []).append(
                {
                    "id": r["id"],
                    "round": r["round"] + 1,  # 1-based, as `show` prints it; the store counts from 0
                    "seed": r["seed"],
                    "status": r["status"],
                    "error": r["error"],
                    "path": str(self.home / r["path"]) if r["path"] else None,
                    "sha256": r["sha256"],
                    "seconds": r["seconds"],
                    "worker": r["worker"] or "local",  # `show` names it where it is not this machine
                    # An edit's image parent and instruction (m016): `show` draws the chain.
                    "source_render_id": r.get("source_render_id"),
                    "source_sha": r.get("source_sha"),
                    "instruction": r.get("instruction"),
                    "scores": ({**s.values, "composite": s.composite} if s else None),
                }
            )
        nodes = {p["id"]: {**p, "round": p["round"] + 1, "renders": by_prompt.get(p["id"], []), "children": []}
                 for p in prompts}
        roots = []
        for p in prompts:
            node = nodes[p["id"]]
            if p["parent_id"] and p["parent_id"] in nodes:
                nodes[p["parent_id"]]["children"].append(node)
            else:
                roots.append(node)
        return {"run": {k: v for k, v in run.items() if k != "request_json"}, "request": json.loads(run["request_json"]), "prompts": roots}


def scores_from(rows: list[dict]) -> Optional[Scores]:
    """A render's Scores from its score rows (name, value, scorer, weighting), or None without any."""
    if not rows:
        return None
    values = {r["name"]: r["value"] for r in rows if r["name"] != "composite"}
    composite = next((r["value"] for r in rows if r["name"] == "composite"), 0.0)
    weighting = next((r["weighting"] for r in rows if r["name"] == "composite"), None)
    return Scores(values=values, composite=composite, scorer=rows[0]["scorer"],
                  details={"weighting": weighting} if weighting else {})


def edit_columns(spec: RenderSpec) -> dict[str, Any]:
    """An edit's image parent and instruction, as the renders table keeps them (m016)."""
    source = spec.source
    if source is None:
        return {}
    return {"source_render_id": source.render_id, "source_sha": source.image_sha, "instruction": source.instruction}


def blank_image_error(image) -> str:
    """Why an image is unusable (all black: what NaN latents decode to), or "" when it is fine."""
    import numpy as np

    pixels = np.asarray(image.convert("RGB"))
    if pixels.size == 0 or int(pixels.max()) == 0:
        return "the engine returned a black image (NaN or blank output); try another seed, or float32/bfloat16 instead of float16"
    return ""


def _version() -> str:
    from reverie.version import __version__

    return __version__
