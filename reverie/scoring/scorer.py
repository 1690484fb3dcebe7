"""Scorers chosen by name: `score(images, ideas, prompts) -> list[Scores]`, batched."""

from __future__ import annotations

from typing import Protocol, Sequence

from reverie.types import ReverieError, Scores

SCORERS = ("auto", "heuristic", "clip")


class Scorer(Protocol):
    name: str
    honest_note: str

    def score(self, images: Sequence, ideas: Sequence[str], prompts: Sequence[str]) -> list[Scores]: ...

    def close(self) -> None: ...


def make_scorer(name: str = "auto", **options) -> Scorer:
    if name in ("auto", "heuristic"):
        # "auto" picks CLIP + aesthetics when their weights are on disk (scoring issue).
        from reverie.scoring.heuristic import HeuristicScorer

        return HeuristicScorer(**options)
    raise ReverieError(f"unknown scorer {name!r}: use one of {', '.join(SCORERS)}")
