"""Base-model first steps (--handoff-steps): the pure parts of handing a denoising run from an
undistilled base model to its distilled sibling of the same architecture.

The handoff runs as one denoising loop over the distilled model's own sigma schedule: the base
transformer predicts the first K steps (at the base's CFG), a step-end callback swaps the
distilled transformer in, and the rest of the schedule runs as the distilled model alone would.
So the latents change hands at exactly the sigma the distilled model expects, and the spec
(profile, steps, shift, seed, K) fixes every number on the way.
"""

from __future__ import annotations


def flow_sigmas(steps: int, shift: float) -> list[float]:
    """The flow-matching sigmas a Z-Image pipeline runs (linspace(1, 1/n, n), shifted), without the final 0."""
    steps = int(steps)
    raw = [1.0 - i * (1.0 - 1.0 / steps) / (steps - 1) for i in range(steps)] if steps > 1 else [1.0]
    return [shift * s / (1.0 + (shift - 1.0) * s) for s in raw]


def cfg_cutoff(steps: int, handoff: int, shift: float) -> float:
    """Z-Image's `cfg_truncation` value that keeps CFG on for the first `handoff` steps only.

    The pipeline drops CFG on step i when 1 - sigma_i exceeds the truncation; halfway between the
    last base step's and the first distilled step's value leaves float rounding no say."""
    if not 0 < handoff < steps:
        raise ValueError(f"handoff steps must be between 1 and {steps - 1} (got {handoff})")
    sigmas = flow_sigmas(steps, shift)
    return ((1.0 - sigmas[handoff - 1]) + (1.0 - sigmas[handoff])) / 2.0
