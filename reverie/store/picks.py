"""A person's picks and rejects: every statement on the picks table.

Every choice is kept in order; the newest one for a render is where it stands (a reject after a
pick takes the pick back). `labelled()` pairs each standing choice with the scores its render had,
which is what taste is learned from.
"""

from __future__ import annotations

import time
from typing import Optional

from reverie.store.tables import Tables

CHOICES = ("pick", "reject")
SOURCES = ("cli", "chat", "web", "api")


class Picks(Tables):
    """`store.picks`: record a choice on a render; read where each render stands."""

    def record(self, render_id: int, choice: str, source: str = "cli", note: Optional[str] = None) -> int:
        if choice not in CHOICES:
            raise ValueError(f"choice must be one of {CHOICES}, not {choice!r}")
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, not {source!r}")
        with self.store.lock, self.db.conn:
            return int(self.db["picks"].insert({"render_id": int(render_id), "choice": choice, "source": source,
                                                "note": note, "created": time.time()}).last_pk)

    def standing(self, render_ids: Optional[list[int]] = None) -> dict[int, str]:
        """render id -> its newest choice ('pick' or 'reject'), for the given renders or all."""
        sql = ("select render_id, choice from picks p where id = "
               "(select max(id) from picks q where q.render_id = p.render_id)")
        params: list = []
        if render_ids is not None:
            if not render_ids:
                return {}
            sql += f" and render_id in ({','.join('?' * len(render_ids))})"
            params = [int(r) for r in render_ids]
        with self.store.lock:
            return {row["render_id"]: row["choice"] for row in self.db.query(sql, params)}

    def history(self, render_id: int) -> list[dict]:
        with self.store.lock:
            return list(self.db.query("select * from picks where render_id = ? order by id", [int(render_id)]))

    def labelled(self) -> list[dict]:
        """Each render's standing choice, its run, and its scores by name (`scores`), oldest first."""
        sql = """
            select p.render_id, p.choice, p.source, p.created, r.run_id
            from picks p join renders r on r.id = p.render_id
            where p.id = (select max(id) from picks q where q.render_id = p.render_id)
            order by p.id
        """
        with self.store.lock:
            rows = list(self.db.query(sql))
            ids = [r["render_id"] for r in rows]
            scores: dict[int, dict[str, float]] = {i: {} for i in ids}
            if ids:
                for s in self.db.query(f"select render_id, name, value from scores where render_id in "
                                       f"({','.join('?' * len(ids))})", ids):
                    scores[s["render_id"]][s["name"]] = s["value"]
        return [{**r, "scores": scores[r["render_id"]]} for r in rows]
