"""What the judge decides after a round: pure functions, tested alone.

Every way in (make, each batch idea, each chat turn) runs the same graph; only the policy and
the budget differ:

- `revise` (make, chat): keep the prompt and try new seeds unless the critic rewrites it.
- `explore` (batch): where the critic would keep the prompt, draw a new interpretation of the
  idea instead, so a night's budget covers several readings of it.

In both, a critic's revision becomes a child prompt, and near-duplicate rounds turn the
variety knobs (shift, blind steps).

Besides the target and the budgets, a run stops early when more renders are unlikely to beat its
best by a margin (`chance_of_better`), judged from the run's own scores: best-of-N search has
diminishing returns, and the renders saved go to the next idea of a batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

POLICIES = ("revise", "explore")

# Decisions the graph acts on.
RENDER = "render"  # the same prompt, new seeds
REVISE = "revise"  # the critic's rewrite, as a child prompt
EXPLORE = "explore"  # a fresh interpretation of the idea
VARIETY = "variety"  # the same prompt, new seeds, variety knobs turned
EDIT = "edit"  # repair: the next round edits the best candidate with the critic's instruction
FINISH = "finish"

# How far below the target a best candidate may be and still be repaired by an edit rather
# than re-rolled (composite units): a candidate that far off is a wrong picture, not a flaw.
EDIT_CLOSE_MARGIN = 0.15


@dataclass(frozen=True)
class EarlyStop:
    """Stop when the chance that the next round holds an image better than the best by `margin`
    (composite units, 0..1) is below `threshold`; no estimate from fewer than `min_scores`."""

    threshold: float = 0.05
    margin: float = 0.02
    min_scores: int = 12  # a tail estimated from fewer is mostly noise


def chance_of_better(scores: Sequence[float], *, next_renders: int, margin: float) -> float:
    """The chance that at least one of `next_renders` more renders scores above max(scores) +
    margin, if scores keep coming from the distribution this run's scores show: a normal with
    their mean and standard deviation, widened by sqrt(1 + 1/n) for the mean's own uncertainty
    (the predictive distribution of one more draw)."""
    if not scores or next_renders <= 0:
        return 0.0
    n = len(scores)
    mean = sum(scores) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in scores) / (n - 1)) if n > 1 else 0.0
    if sd <= 1e-12:
        return 0.0  # every render scored the same: nothing suggests the next will differ
    z = (max(scores) + margin - mean) / (sd * math.sqrt(1 + 1 / n))
    one = 0.5 * math.erfc(z / math.sqrt(2))
    return 1.0 - (1.0 - one) ** next_renders


def early_stop_for(policy: str) -> Optional[EarlyStop]:
    """The rule for a loop policy: on for `revise`, whose next round draws new seeds for a prompt
    like the last ones, so the run's scores so far predict it; off for `explore`, whose next round
    is a new reading of the idea that past scores say nothing about (a batch's budget governs)."""
    return EarlyStop() if policy == "revise" else None


@dataclass(frozen=True)
class Budget:
    rounds: int
    target: Optional[float] = None
    max_seconds: Optional[float] = None  # this run's own time budget
    max_renders: Optional[int] = None
    deadline_passed: bool = False  # a budget shared with other runs (a batch's --hours)
    deadline_label: str = ""
    early_stop: Optional[EarlyStop] = field(default_factory=EarlyStop)  # None: only target and budgets stop


def stop_reason(budget: Budget, *, finished_round: int, history: Sequence[float], elapsed: float,
                renders: int, scores: Sequence[float] = (), next_renders: int = 0) -> str:
    """Why the run stops after `finished_round` (0-based), or "" to go on. `scores` are every
    composite of the run so far and `next_renders` how many the next round would make."""
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
    rule = budget.early_stop
    if rule is not None and len(scores) >= rule.min_scores and next_renders > 0:
        chance = chance_of_better(scores, next_renders=next_renders, margin=rule.margin)
        if chance < rule.threshold:
            return (f"unlikely to improve: {chance:.1%} chance that {next_renders} more renders beat the best "
                    f"({max(scores):.3f}) by {rule.margin} (below {rule.threshold:.0%}, from this run's "
                    f"{len(scores)} scores)")
    return ""


def should_edit(*, can_edit: bool, instruction: str, best: float, target: Optional[float],
                margin: float = EDIT_CLOSE_MARGIN) -> bool:
    """Repair the best candidate by an edit instead of drawing new seeds: only with an editor, an
    instruction that says what to fix, and a candidate close to the target (with no target, the
    critic's word that it is close is enough)."""
    if not can_edit or not instruction.strip():
        return False
    return target is None or best >= target - margin


def next_step(policy: str, critic_action: str, has_revision: bool, *, edit: bool = False,
              editing: bool = False) -> str:
    """The decision after a round that did not stop the run. `edit`: should_edit() said yes to the
    critic's edit; `editing`: the next round starts from a source image (an edit run, or a repair),
    whose seeds the variety knobs do not steer, so there it asks for more seeds instead."""
    if policy not in POLICIES:
        raise ValueError(f"unknown loop policy {policy!r}: use one of {', '.join(POLICIES)}")
    if critic_action == "edit" and edit:
        return EDIT
    if critic_action == "variety":
        return RENDER if editing else VARIETY
    if critic_action == "revise" and has_revision:
        return REVISE
    return EXPLORE if policy == "explore" else RENDER


def turn_knobs(shift: Optional[float], blind_steps: int, *, profile_shift: Optional[float],
               shift_max: float = 7.0, blind_max: int = 2) -> tuple[Optional[float], int]:
    """One turn of the variety knobs: shift up by 2 (where the model has one), one more blind step."""
    new_shift = min(shift_max, (shift or profile_shift or 3.0) + 2.0) if profile_shift else shift
    return new_shift, min(blind_max, blind_steps + 1)


def turn_handoff(handoff_steps: int, *, available: bool, steps: int, maximum: int = 1) -> int:
    """One turn of the fourth variety knob: one more first step on the undistilled base model, up
    to `maximum`, always leaving the distilled model at least one step. Unchanged where the base
    model is absent or the render cannot hand over (an edit, a reference, CFG on the distilled model)."""
    k = max(0, int(handoff_steps or 0))
    if not available:
        return k
    return max(k, min(int(maximum), int(steps) - 1, k + 1))  # never lower than the person set it


def turn_embed_noise(strength: float, *, step: float = 0.1, maximum: float = 0.3) -> float:
    """One turn of the third variety knob: more noise on the text embeddings (a share of their
    standard deviation), up to `maximum`, where a distilled model's seeds look alike."""
    strength = float(strength or 0.0)
    return round(max(strength, min(maximum, strength + step)), 4)  # never lower than the person set it


def diversity(similarity: Optional[float]) -> Optional[float]:
    """A round's diversity, 0..1: one minus the mean pairwise cosine similarity of its images'
    embeddings (None with fewer than two)."""
    return None if similarity is None else round(max(0.0, 1.0 - similarity), 4)
