"""Learnt weightings (`reverie taste`): every statement on the tastes table.

One row per fit; a family's newest active row is the weighting its composite uses. `reset`
deactivates them all, so the default comes back and the history stays.
"""

from __future__ import annotations

import json
import time

from reverie.store.tables import Tables


class Tastes(Tables):
    """`store.tastes`: save a fit, read the active weighting of each scorer family, reset."""

    def save(self, *, family: str, weights: dict[str, float], picks: int, rejects: int, agreement: float,
             default_agreement: float) -> int:
        with self.store.lock, self.db.conn:
            self.db.execute("update tastes set active = 0 where family = ?", [family])
            return int(self.db["tastes"].insert({
                "family": family, "weights_json": json.dumps(weights, sort_keys=True), "picks": int(picks),
                "rejects": int(rejects), "agreement": float(agreement), "default_agreement": float(default_agreement),
                "active": 1, "created": time.time()}).last_pk)

    def active(self) -> dict[str, dict]:
        """family -> its active row, with `weights` decoded."""
        with self.store.lock:
            rows = list(self.db.query("select * from tastes where active = 1 order by id"))
        return {r["family"]: {**r, "weights": json.loads(r["weights_json"])} for r in rows}

    def reset(self) -> int:
        """Back to the default weighting everywhere; how many weightings were active."""
        with self.store.lock, self.db.conn:
            return self.db.execute("update tastes set active = 0 where active = 1").rowcount
