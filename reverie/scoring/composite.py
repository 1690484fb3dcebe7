"""One composite in 0..1 from verifiers on different scales, that no single verifier can carry.

1. Each component becomes a percentile against a fixed reference distribution for its scorer
   (REFERENCES, version REFERENCE_VERSION): 0.5 means "a typical generated image", whatever
   the run, so `--target 0.7` means the same thing every time. The quantiles are shipped in
   code, not learnt from the run, because a run-relative scale would make the best image of a
   bad run look as good as the best of a good one.
2. The configured weights are shares; none may exceed MAX_SHARE of the total (the excess goes to
   the others), so turning one weight up cannot make the search optimise one verifier alone.
3. A share AGREEMENT of the composite is the lowest percentile: an image that games one
   verifier while the others fall (Ma et al. 2025, arXiv 2501.09732) is pulled down by them.

Raw values are kept for the store; the percentiles and the reference version go in details.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

REFERENCE_VERSION = "ref1"
PERCENTS = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
# Raw value at each of PERCENTS for images from current text-to-image models against their
# prompts. Approximate, from published figures: CLIP ViT-L/14 image-text cosine (CLIPScore,
# Hessel et al. 2021: CLIP-S = 2.5 * cosine, about 0.7-0.8 for good captions), LAION aesthetic v2
# (generated images mostly 5-7), PickScore v1 (Kirstain et al. 2023: about 19-23 on Pick-a-Pic)
# and HPS v2.1 (Wu et al. 2023: about 0.25-0.33 for current models).
REFERENCES: dict[str, tuple[float, ...]] = {
    "faithfulness": (0.10, 0.18, 0.225, 0.255, 0.285, 0.325, 0.42),
    "prompt_match": (0.10, 0.18, 0.225, 0.255, 0.285, 0.325, 0.42),
    "aesthetic": (2.0, 4.6, 5.3, 5.8, 6.3, 6.9, 8.5),
    "pickscore": (15.0, 18.8, 20.3, 21.2, 22.0, 23.2, 26.0),
    "hps": (0.12, 0.21, 0.245, 0.265, 0.285, 0.31, 0.36),
}
MAX_SHARE = 0.4
AGREEMENT = 0.25
HELD_OUT_PREFIX = "held_out:"  # components named so are stored and shown, never combined

# faithfulness: image vs the user's idea; prompt_match: image vs the expanded prompt.
DEFAULT_WEIGHTS: dict[str, float] = {"faithfulness": 0.35, "prompt_match": 0.15, "aesthetic": 0.3, "pickscore": 0.1,
                                     "hps": 0.1}


def normalise(name: str, value: float) -> float:
    """A component's percentile (0..1) against its reference; a component with no reference is
    taken to be a 0..1 quality already, clamped."""
    ref = REFERENCES.get(name)
    if ref is None:
        return min(1.0, max(0.0, float(value)))
    return percentile(value, ref)


def percentile(value: float, quantiles: Sequence[float]) -> float:
    """Where a raw value sits (0..1) among reference images whose quantiles at PERCENTS are given."""
    return float(np.interp(float(value), quantiles, PERCENTS))


def capped_shares(weights: Mapping[str, float], cap: float = MAX_SHARE) -> dict[str, float]:
    """Weights as shares summing to 1 with none above `cap` (or 1/n when fewer components than
    1/cap are weighted); what a capped component loses goes to the others in proportion."""
    shares = {k: float(w) for k, w in weights.items() if w > 0}
    if not shares:
        return {}
    cap = max(cap, 1.0 / len(shares))
    total = sum(shares.values())
    shares = {k: w / total for k, w in shares.items()}
    fixed: dict[str, float] = {}
    while True:
        over = [k for k, s in shares.items() if k not in fixed and s > cap + 1e-12]
        if not over:
            return {k: fixed.get(k, s) for k, s in shares.items()}
        for k in over:
            fixed[k] = cap
        free = {k: s for k, s in shares.items() if k not in fixed}
        room = 1.0 - cap * len(fixed)
        free_total = sum(free.values())
        shares = {**fixed, **{k: room * s / free_total for k, s in free.items()}} if free_total > 0 else dict(fixed)


def composite(values: Mapping[str, float], weights: Mapping[str, float]) -> tuple[float, dict[str, float]]:
    """(composite in 0..1, the percentile of each component). Components without a weight, and
    held-out ones, are normalised for display but do not count."""
    normalised = {name: normalise(name, v) for name, v in values.items() if not name.startswith(HELD_OUT_PREFIX)}
    shares = capped_shares({name: float(weights.get(name, 0.0)) for name in normalised})
    if not shares:
        return 0.0, normalised
    mean = sum(normalised[name] * s for name, s in shares.items())
    lowest = min(normalised[name] for name in shares)
    return (1.0 - AGREEMENT) * mean + AGREEMENT * lowest, normalised


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
