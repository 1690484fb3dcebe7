"""One composite in 0..1 from scores on different scales.

Each component is first mapped to 0..1 over the range it really takes, then averaged with the
configured weights over the components that are present. Raw values are kept for the store.
"""

from __future__ import annotations

from typing import Mapping

# CLIP image-text cosine for ViT-L/14 sits around 0.15 (unrelated) to 0.35 (a close caption).
CLIP_RANGE = (0.15, 0.35)
# PickScore (logit scale times cosine) is about 17 for poor matches and 25 for excellent ones.
PICKSCORE_RANGE = (17.0, 25.0)

# faithfulness: image vs the user's idea; prompt_match: image vs the expanded prompt.
DEFAULT_WEIGHTS: dict[str, float] = {"faithfulness": 0.4, "prompt_match": 0.15, "aesthetic": 0.35, "pickscore": 0.1}


def _unit(value: float, low: float, high: float) -> float:
    return min(1.0, max(0.0, (value - low) / (high - low)))


def normalise(name: str, value: float) -> float:
    """A component's raw value mapped to 0..1; values already in 0..1 pass through clamped."""
    if name in ("faithfulness", "prompt_match"):
        return _unit(value, *CLIP_RANGE)
    if name == "aesthetic":
        return _unit(value, 1.0, 10.0)
    if name == "pickscore":
        return _unit(value, *PICKSCORE_RANGE)
    return min(1.0, max(0.0, value))


def composite(values: Mapping[str, float], weights: Mapping[str, float]) -> tuple[float, dict[str, float]]:
    """(composite in 0..1, the normalised components). Components without a weight count zero."""
    normalised = {name: normalise(name, v) for name, v in values.items()}
    used = {name: float(weights.get(name, 0.0)) for name in normalised}
    total = sum(w for w in used.values() if w > 0)
    if total <= 0:
        return 0.0, normalised
    score = sum(normalised[name] * w for name, w in used.items() if w > 0) / total
    return score, normalised


def check_weights(weights: Mapping[str, float]) -> dict[str, float]:
    from reverie.types import ReverieError

    out = {}
    for name, w in weights.items():
        try:
            w = float(w)
        except (TypeError, ValueError):
            raise ReverieError(f"scoring weight {name} = {w!r} is not a number: write e.g. {name} = 0.3") from None
        if w < 0:
            raise ReverieError(f"scoring weight {name} = {w} is negative: use 0 to ignore a component")
        out[name] = w
    return out
