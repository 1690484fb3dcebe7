"""The requests `reverie serve` accepted: every statement on the serve_requests table.

A request is accepted (a row) before it runs, so a server killed mid-run leaves the row open and
the next server on the same home finishes it; the run itself resumes by request like any other.
"""

from __future__ import annotations

import json
import time
from typing import Any, Optional

from reverie.store.tables import Tables

OPEN = ("accepted", "running")
STATUSES = (*OPEN, "done", "failed", "cancelled")


class ServeRequests(Tables):
    """The accepted-request queue of the server, over the store's one connection."""

    def accept(self, kind: str, payload: dict[str, Any], keep: bool) -> int:
        with self.store.lock, self.db.conn:
            return int(self.db["serve_requests"].insert({
                "kind": kind, "payload_json": json.dumps(payload, sort_keys=True), "keep": int(keep),
                "status": "accepted", "run_id": None, "error": None, "created": time.time(), "finished": None,
            }).last_pk)

    def started(self, request_id: int, run_id: str) -> None:
        with self.store.lock, self.db.conn:
            self.db["serve_requests"].update(request_id, {"status": "running", "run_id": run_id})

    def finish(self, request_id: int, status: str, error: Optional[str] = None) -> None:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {status!r}")
        with self.store.lock, self.db.conn:
            self.db["serve_requests"].update(request_id, {"status": status, "error": error, "finished": time.time()})

    def get(self, request_id: int) -> Optional[dict]:
        with self.store.lock:
            rows = list(self.db.query("select * from serve_requests where id = ?", [int(request_id)]))
        return rows[0] if rows else None

    def open_requests(self) -> list[dict]:
        """Accepted and not ended, oldest first: what a restarted server finishes."""
        with self.store.lock:
            return list(self.db.query(
                f"select * from serve_requests where status in ({','.join('?' * len(OPEN))}) order by id", list(OPEN)))

    def render_by_sha(self, sha256: str) -> Optional[dict]:
        """The ok render whose image has this content hash (files are only served this way)."""
        with self.store.lock:
            rows = list(self.db.query("select * from renders where sha256 = ? and status = 'ok' order by id limit 1",
                                      [sha256]))
        return rows[0] if rows else None

    def render(self, render_id: int) -> Optional[dict]:
        """A render row by id, or None (a page asked for an image this home does not have)."""
        with self.store.lock:
            rows = list(self.db.query("select * from renders where id = ?", [int(render_id)]))
        return rows[0] if rows else None
