"""The critic: after a round, what to try next. This is the rule-based (offline) critic."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from reverie.types import Expansion


@dataclass(frozen=True)
class Critique:
    action: str  # "more_seeds" | "variety" | "revise"
    reason: str
    expansion: Optional[Expansion] = None


def rule_critic(
    prompt: Expansion,
    round_best: float,
    previous_best: Optional[float],
    similarity: float,
    similarity_threshold: float = 0.9,
    stall_margin: float = 0.005,
) -> Critique:
    """More seeds while the scores climb; variety knobs when candidates look alike; a revised
    prompt when the scores stall."""
    if similarity >= similarity_threshold:
        return Critique("variety", f"candidates are too alike (mean cosine {similarity:.2f}): more shift and blind steps")
    if previous_best is not None and round_best <= previous_best + stall_margin:
        return Critique("revise", f"scores stalled at {round_best:.3f}: try a different interpretation of the idea")
    return Critique("more_seeds", "scores are still improving: more seeds of the same prompt")
