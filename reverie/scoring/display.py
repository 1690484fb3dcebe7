"""What the CLI, lineage and the report print beside a score: which scorer gave it."""

from __future__ import annotations

from typing import Iterable


def best_scorers(store, run_ids: Iterable[str]) -> dict[str, str]:
    """run id -> the scorer whose composite is that run's best (the name `runs` prints beside it)."""
    out: dict[str, str] = {}
    for run_id in run_ids:
        row = next(iter(store.db.query(
            """select s.scorer from scores s join renders r on r.id = s.render_id
               where r.run_id = ? and s.name = 'composite' order by s.value desc limit 1""", [run_id])), None)
        if row:
            out[run_id] = row["scorer"]
    return out
