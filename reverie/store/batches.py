"""Batches, their items and the images each item keeps: every statement on those tables."""

from __future__ import annotations

import time
from typing import Any, Optional

from reverie.store.tables import Tables


class Batches(Tables):
    """`store.batches`: a batch is found again by its id (the hash of its file and options)."""

    def open(self, batch_id: str, source: str, options_json: str) -> None:
        """Create the batch, or mark the one found running again."""
        with self.store.lock, self.db.conn:
            if self.get(batch_id) is None:
                self.db["batches"].insert({"id": batch_id, "source": source, "options_json": options_json,
                                           "status": "running", "seconds_spent": 0.0, "report_path": "",
                                           "created": time.time(), "finished": None})
            else:
                self.db["batches"].update(batch_id, {"status": "running"})

    def summaries(self, limit: int = 10, batch_id: Optional[str] = None) -> list[dict]:
        """The newest batches first (or the one `batch_id`), each with how many of its ideas are
        done, failed and in all."""
        where, params = ("where b.id = ?", [batch_id]) if batch_id is not None else ("", [])
        sql = f"""
            select b.*, count(i.id) as ideas,
                   sum(i.status = 'done') as done, sum(i.status = 'failed') as failed
            from batches b left join batch_items i on i.batch_id = b.id {where}
            group by b.id order by b.created desc limit ?
        """
        with self.store.lock:
            return list(self.db.query(sql, [*params, int(limit)]))

    def get(self, batch_id: str) -> Optional[dict]:
        with self.store.lock:
            rows = list(self.db.query("select * from batches where id = ?", [batch_id]))
            return rows[0] if rows else None

    def set_status(self, batch_id: str, status: str, **fields: Any) -> None:
        with self.store.lock, self.db.conn:
            self.db["batches"].update(batch_id, {"status": status, **fields})

    def spend(self, batch_id: str, seconds_spent: float) -> None:
        with self.store.lock, self.db.conn:
            self.db["batches"].update(batch_id, {"seconds_spent": seconds_spent})

    def seconds_spent(self, batch_id: str) -> float:
        row = self.get(batch_id)
        return float(row["seconds_spent"] or 0.0) if row else 0.0

    def finish(self, batch_id: str, report_path: str) -> None:
        self.set_status(batch_id, "done", report_path=report_path, finished=time.time())

    # -- items -----------------------------------------------------------------------------
    def items(self, batch_id: str) -> list[dict]:
        with self.store.lock:
            return list(self.db.query("select * from batch_items where batch_id = ? order by idx", [batch_id]))

    def item(self, batch_id: str, idx: int) -> Optional[dict]:
        with self.store.lock:
            rows = list(self.db.query("select * from batch_items where batch_id = ? and idx = ?", [batch_id, idx]))
            return rows[0] if rows else None

    def failed_indices(self, batch_id: str) -> set[int]:
        with self.store.lock:
            return {r["idx"] for r in self.db.query(
                "select idx from batch_items where batch_id = ? and status = 'failed'", [batch_id])}

    def put_item(self, batch_id: str, idx: int, **fields: Any) -> dict:
        """Insert the item, or update the one at that index; return its row."""
        with self.store.lock:
            row = self.item(batch_id, idx)
            with self.db.conn:
                if row is None:
                    self.db["batch_items"].insert({"batch_id": batch_id, "idx": idx, **fields})
                else:
                    self.db["batch_items"].update(row["id"], fields)
            return self.item(batch_id, idx)

    # -- keeps -----------------------------------------------------------------------------
    def set_keeps(self, item_id: int, keeps: list[tuple[int, bool]]) -> None:
        """Replace an item's kept renders: (render id, near-duplicate) in rank order."""
        with self.store.lock, self.db.conn:
            self.db.execute("delete from batch_keeps where item_id = ?", [item_id])
            self.db["batch_keeps"].insert_all(
                [{"item_id": item_id, "render_id": rid, "rank": n, "near_duplicate": int(dup)}
                 for n, (rid, dup) in enumerate(keeps, 1)])

    def keeps(self, item_id: int) -> list[dict]:
        with self.store.lock:
            return list(self.db.query("select * from batch_keeps where item_id = ? order by rank", [item_id]))

    # -- poisoned rounds -------------------------------------------------------------------
    def round_started(self, item_id: int, rnd: int, evidence_json: Optional[str] = None) -> None:
        """Committed before the engine starts on an item's round: a crash now is pinned on it,
        with what the next process needs to tell it from a kill (orchestrator/quarantine.py)."""
        with self.store.lock, self.db.conn:
            self.db["batch_items"].update(item_id, {"inflight_round": rnd, "inflight_json": evidence_json})

    def round_ended(self, item_id: int) -> None:
        """The round came back (images or a handled error): the crash streak is over."""
        with self.store.lock, self.db.conn:
            self.db["batch_items"].update(item_id, {"inflight_round": None, "inflight_json": None, "crashes": 0,
                                                    "last_crash_json": None})

    def record_death(self, item_id: int, crashes: int, last_crash_json: Optional[str]) -> None:
        """The last process died with this item's round in the engine: the streak as judged now."""
        with self.store.lock, self.db.conn:
            self.db["batch_items"].update(item_id, {"inflight_round": None, "inflight_json": None,
                                                    "crashes": crashes, "last_crash_json": last_crash_json})

    def clear_inflight(self, item_id: int) -> None:
        """The round ended without the process dying (stopped, failed): no crash to count."""
        with self.store.lock, self.db.conn:
            self.db["batch_items"].update(item_id, {"inflight_round": None, "inflight_json": None})
