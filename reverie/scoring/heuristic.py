"""A scorer that needs no weights: sharpness, noise, exposure, contrast and colourfulness.

It says nothing about whether the image matches the prompt. It exists so that the loop works
on a machine with no CLIP weights, and it names itself in every score it gives.

Each component is a quality in 0..1 (1 is good) measured on a copy scaled to WORK_SIDE, so a
1024 px render and a 128 px test image are judged alike. The composite is their weighted
geometric mean: one defect (static, a black frame, a blank canvas) sinks an image however good
its other components are, which an average would hide. tests/test_heuristic_ranking.py holds
it to a labelled set of synthetic images (reverie.scoring.synthetic).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from reverie.types import Scores

NAME = "heuristic"
WEIGHTS = {"sharpness": 0.25, "noise": 0.35, "exposure": 0.2, "contrast": 0.1, "colourfulness": 0.1}
WORK_SIDE = 256
FLOOR = 0.02  # a component's smallest factor in the geometric mean, so a zero does not erase the others
EDGE_SPAN = 4  # pixels either side of an edge over which its contrast is measured


def _gray(a: np.ndarray) -> np.ndarray:
    return a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114


def _clamp(x: float) -> float:
    return min(1.0, max(0.0, x))


def _edge_ratios(g: np.ndarray, threshold: float) -> np.ndarray:
    """Along rows: for each place where the 2*EDGE_SPAN-pixel step is large, the largest one-pixel
    step inside it over the whole step. A crisp edge makes its jump in one pixel (ratio near 1);
    a blurred one spreads it (ratio near 1/(2*EDGE_SPAN))."""
    s = EDGE_SPAN
    if g.shape[1] <= 2 * s:
        return np.zeros(0)
    coarse = np.abs(g[:, 2 * s:] - g[:, :-2 * s])
    steps = np.abs(np.diff(g, axis=1))
    fine = np.max(np.stack([steps[:, i:i + coarse.shape[1]] for i in range(2 * s)]), axis=0)
    mask = coarse > threshold
    return np.minimum(1.0, fine[mask] / coarse[mask])


def sharpness(g: np.ndarray) -> float:
    # The edge ratio over rows and columns; 0 where there is no edge at all (a flat frame).
    lo, hi = np.percentile(g, [1, 99])
    threshold = max(12.0, 0.2 * float(hi - lo))
    ratios = np.concatenate([_edge_ratios(g, threshold), _edge_ratios(g.T, threshold)])
    if ratios.size < 0.002 * g.size:
        return 0.0
    return _clamp((float(np.median(ratios)) - 0.1) / 0.8)


def noise(g: np.ndarray) -> float:
    """1.0 clean, 0 static. Natural pictures have sparse gradients (smooth areas, a few edges);
    noise puts a gradient everywhere, so the median step is a large share of the strongest ones."""
    if g.shape[0] < 3 or g.shape[1] < 3:
        return 1.0
    steps = np.maximum(np.abs(np.diff(g, axis=1))[:-1], np.abs(np.diff(g, axis=0))[:, :-1])
    median, strong = np.percentile(steps, [50, 99])
    # A median step under a few grey levels is invisible grain, not noise.
    spread = float(median) / max(float(strong), 1.0) * _clamp(float(median) / 4.0)
    return (1.0 - _clamp((spread - 0.03) / 0.3)) ** 2


def exposure(g: np.ndarray) -> float:
    # Near full marks for a mean in the middle half, falling fast towards black or white; clipping costs.
    mean = float(g.mean()) / 255.0
    level = _clamp(1.0 - (abs(mean - 0.5) / 0.42) ** 2)
    clipped = float(((g < 3) | (g > 252)).mean())
    return level * _clamp(1.0 - max(0.0, clipped - 0.05) / 0.45)


def contrast(g: np.ndarray) -> float:
    lo, hi = np.percentile(g, [1, 99])
    return _clamp(float(hi - lo) / 160.0)


def colourfulness(a: np.ndarray) -> float:
    # Hasler and Süsstrunk (2003); ~100 is "extremely colourful", ~30 "moderately".
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    rg, yb = r - g, 0.5 * (r + g) - b
    m = math.sqrt(rg.std() ** 2 + yb.std() ** 2) + 0.3 * math.sqrt(rg.mean() ** 2 + yb.mean() ** 2)
    return _clamp(m / 80.0)


def signature(a: np.ndarray) -> tuple[float, ...]:
    """A small colour thumbnail, centred and normalised: close images have cosine near 1."""
    from PIL import Image

    thumb = np.asarray(Image.fromarray(a.astype(np.uint8)).resize((12, 12), Image.BILINEAR), dtype=np.float32)
    v = thumb.reshape(-1) - thumb.mean()
    n = float(np.linalg.norm(v)) or 1.0
    return tuple((v / n).tolist())


def working_copy(image) -> np.ndarray:
    from PIL import Image

    image = image.convert("RGB")
    scale = WORK_SIDE / max(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.BOX)
    return np.asarray(image, dtype=np.float32)


def measure(image) -> dict[str, float]:
    a = working_copy(image)
    g = _gray(a)
    return {"sharpness": round(sharpness(g), 5), "noise": round(noise(g), 5), "exposure": round(exposure(g), 5),
            "contrast": round(contrast(g), 5), "colourfulness": round(colourfulness(a), 5)}


def combine(values: dict[str, float], weights: dict[str, float]) -> float:
    """The weighted geometric mean of the components, each floored at FLOOR."""
    used = {k: w for k, w in weights.items() if k in values and w > 0}
    total = sum(used.values())
    if total <= 0:
        return 0.0
    return math.exp(sum(w * math.log(max(FLOOR, values[k])) for k, w in used.items()) / total)


class HeuristicScorer:
    name = NAME
    honest_note = "heuristic scorer (no CLIP weights): ranks sharpness, noise, exposure, contrast and colour, not faithfulness"
    dedupe_threshold = 0.95

    def __init__(self, weights: dict[str, float] | None = None, held_out=None, weighting: str = "default"):
        self.weights = dict(weights or WEIGHTS)
        self.weighting = weighting  # "default", or "taste N" when the weights were learnt from picks
        self.held_out = held_out  # a HeldOutJudge: stored and shown, never in the composite

    def score(self, images: Sequence, ideas: Sequence[str], prompts: Sequence[str]) -> list[Scores]:
        out = []
        for image in images:
            values = measure(image)
            embedding = signature(np.asarray(image.convert("RGB"), dtype=np.float32))
            out.append(Scores(values=values, composite=round(combine(values, self.weights), 5), scorer=self.name,
                              details={"weighting": self.weighting}, embedding=embedding))
        return self.held_out.add_to(out, images, prompts) if self.held_out is not None else out

    def close(self) -> None:
        if self.held_out is not None:
            self.held_out.close()
