"""What the judge decides after a round: pure functions, tested alone.

Every way in (make, each batch idea, each chat turn) runs the same graph; only the policy and
the budget differ:

- `revise` (make, chat): keep the prompt and try new seeds unless the critic rewrites it.
- `explore` (batch): where the critic would keep the prompt, draw a new interpretation of the
  idea instead, so a night's budget covers several readings of it.

In both, a critic's revision becomes a child prompt, and near-duplicate rounds turn the
variety knobs (shift, blind steps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

POLICIES = ("revise", "explore")

# Decisions the graph acts on.
RENDER = "render"  # the same prompt, new seeds
REVISE = "revise"  # the critic's rewrite, as a child prompt
EXPLORE = "explore"  # a fresh interpretation of the idea
VARIETY = "variety"  # the same prompt, new seeds, variety knobs turned
FINISH = "finish"


@dataclass(frozen=True)
class Budget:
    rounds: int
    target: Optional[float] = None
    max_seconds: Optional[float] = None  # this run's own time budget
    max_renders: Optional[int] = None
    deadline_passed: bool = False  # a budget shared with other runs (a batch's --hours)
    deadline_label: str = ""


def stop_reason(budget: Budget, *, finished_round: int, history: Sequence[float], elapsed: float,
                renders: int) -> str:
    """Why the run stops after `finished_round` (0-based), or "" to go on."""
    best = max(history) if history else None
    if budget.target is not None and best is not None and best >= budget.target:
        return f"target {budget.target} reached ({best:.3f})"
    if budget.max_renders is not None and renders >= budget.max_renders:
        return f"render budget reached ({budget.max_renders})"
    if finished_round + 1 >= budget.rounds:
        return f"round budget reached ({budget.rounds})"
    if budget.max_seconds is not None and elapsed >= budget.max_seconds:
        return f"time budget reached ({budget.max_seconds:.0f}s)"
    if budget.deadline_passed:
        return f"time budget reached ({budget.deadline_label})" if budget.deadline_label else "time budget reached"
    return ""


def next_step(policy: str, critic_action: str, has_revision: bool) -> str:
    """The decision after a round that did not stop the run."""
    if policy not in POLICIES:
        raise ValueError(f"unknown loop policy {policy!r}: use one of {', '.join(POLICIES)}")
    if critic_action == "variety":
        return VARIETY
    if critic_action == "revise" and has_revision:
        return REVISE
    return EXPLORE if policy == "explore" else RENDER


def turn_knobs(shift: Optional[float], blind_steps: int, *, profile_shift: Optional[float],
               shift_max: float = 7.0, blind_max: int = 2) -> tuple[Optional[float], int]:
    """One turn of the variety knobs: shift up by 2 (where the model has one), one more blind step."""
    new_shift = min(shift_max, (shift or profile_shift or 3.0) + 2.0) if profile_shift else shift
    return new_shift, min(blind_max, blind_steps + 1)
