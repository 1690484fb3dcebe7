"""What the CLI, lineage and the report print beside a score: which scorer gave it, and what the
held-out judge thinks of the kept images."""

from __future__ import annotations

from typing import Mapping, Optional, Sequence


def held_out_line(store, run_id: str, kept_ids: Optional[Sequence[int]] = None, k: int = 4) -> str:
    """The held-out judge's verdict on a run: kept renders (`kept_ids`, else the top k by
    composite) against the others. `show` and the batch report print it."""
    from reverie.scoring.held_out import selection_check

    ranked = store.best(run_id, k=1_000_000)
    kept_set = set(kept_ids) if kept_ids is not None else {r.id for r in ranked[:k]}
    return selection_check([r.scores for r in ranked if r.id in kept_set],
                           [r.scores for r in ranked if r.id not in kept_set])


def held_out_judges(scores: Mapping[str, object]) -> list[str]:
    """What the held-out judges said of one image, a line each, or the one line saying there is
    none and how to get one: `lineage` and the web studio's image page print these."""
    from reverie.scoring.composite import HELD_OUT_PREFIX
    from reverie.scoring.held_out import HOW_TO_GET

    said = [f"held-out judge {k[len(HELD_OUT_PREFIX):]} {v:.3f} (never used to select)"
            for k, v in scores.items() if k.startswith(HELD_OUT_PREFIX)]
    return said or [f"no held-out judge ({HOW_TO_GET})"]
