"""Search in noise space: a cross-entropy method over the low-frequency part of the initial noise.

Re-rolling seeds draws every candidate's starting noise afresh. Most of what a flow or diffusion
model decides early (composition, where the mass sits) is carried by the lowest spatial
frequencies of that noise, so after a round the best candidates' low-frequency components say
where to look next (Spectral Evolution Search, arXiv 2602.03208). Each round refits a Gaussian to
the elite candidates' components and draws the next round's from it.

A candidate's components are drawn from its seed and the round's distribution, both stored, so
they reproduce. Everything here is a pure function of its arguments. `reverie make --search noise`
runs it (orchestrator/graph.py): round 1 draws from the prior, each later round from the
distribution refitted to every scored candidate so far; the in-process diffusers engine sets the
components as each latent channel's lowest DCT coefficients (render/lowfreq.py).
bench/bench_curation.py measures it on a truth engine whose quality is a smooth function of the
components (see docs/portfolio.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

ELITE = 0.25  # the share of the best candidates the next round's distribution is fitted to
MIN_STD = 0.35  # never narrower than this: the search keeps exploring, and the noise stays noise-like
SMOOTH = 0.7  # the new fit's weight against the last distribution's
SIDE = 2  # the lowest SIDE x SIDE DCT coefficients of each latent channel are searched
SEARCHES = ("seeds", "noise")


def dims(channels: int) -> int:
    """How many components a candidate has on a model with `channels` latent channels."""
    return int(channels) * SIDE * SIDE


@dataclass(frozen=True)
class NoiseDist:
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def prior(cls, dims: int) -> "NoiseDist":
        return cls(mean=(0.0,) * dims, std=(1.0,) * dims)


PREVIEW_CANDIDATES = 4  # candidate components per seed when a cheap preview picks among them


def candidates(dist: NoiseDist, seed: int, k: int) -> list[tuple[float, ...]]:
    """k candidate component vectors for one seed; the first is draw()'s, so k = 1 is no preview."""
    out = draw(dist, [seed])
    mean, std = np.asarray(dist.mean), np.asarray(dist.std)
    for j in range(1, int(k)):
        z = np.random.default_rng([int(seed), 0x5E5, j]).standard_normal(len(mean))
        out.append(tuple(round(float(v), 6) for v in mean + std * z))
    return out


def pick(scores: Sequence[float]) -> int:
    """The candidate a seed keeps: the best preview composite, the first of equals."""
    return int(np.argmax(np.asarray(scores, dtype=np.float64)))


def preview_cost(previews: int, preview_steps: int, steps: int) -> float:
    """What previews cost in renders: each is preview_steps / steps of a full render (the
    denoising steps dominate; the VAE decode and the scoring are left out)."""
    return previews * float(preview_steps) / float(steps)


def draw(dist: NoiseDist, seeds: Sequence[int]) -> list[tuple[float, ...]]:
    """One vector of low-frequency components per seed, drawn from `dist` with the seed alone."""
    mean, std = np.asarray(dist.mean), np.asarray(dist.std)
    out = []
    for seed in seeds:
        z = np.random.default_rng([int(seed), 0x5E5]).standard_normal(len(mean))
        out.append(tuple(round(float(v), 6) for v in mean + std * z))
    return out


def refit(dist: NoiseDist, components: Sequence[Sequence[float]], scores: Sequence[float]) -> NoiseDist:
    """The next round's distribution from every scored candidate so far (components, composite)."""
    if len(components) < 2:
        return dist
    c = np.asarray(components, dtype=np.float64)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    elite = c[order[:max(2, int(round(len(c) * ELITE)))]]
    mean = SMOOTH * elite.mean(axis=0) + (1 - SMOOTH) * np.asarray(dist.mean)
    std = np.maximum(MIN_STD, SMOOTH * elite.std(axis=0) + (1 - SMOOTH) * np.asarray(dist.std))
    return NoiseDist(mean=tuple(round(float(v), 6) for v in mean), std=tuple(round(float(v), 6) for v in std))


def next_dist(dist: NoiseDist, candidates: Sequence[tuple[Sequence[float], float]]) -> NoiseDist:
    """The distribution the next round draws from: `dist` refitted to every scored candidate so
    far, (components, composite); candidates of another size (none searched yet) are left out."""
    fitted = [(tuple(c), float(s)) for c, s in candidates if len(c) == len(dist.mean)]
    return refit(dist, [c for c, _ in fitted], [s for _, s in fitted])
