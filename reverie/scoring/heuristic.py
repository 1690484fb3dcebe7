"""A scorer that needs no weights: sharpness, exposure, colourfulness and noise.

It says nothing about whether the image matches the prompt. It exists so that the loop works
on a machine with no CLIP weights, and it names itself in every score it gives.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from reverie.types import Scores

NAME = "heuristic"
WEIGHTS = {"sharpness": 0.3, "exposure": 0.25, "colourfulness": 0.25, "noise": 0.2}


def _gray(a: np.ndarray) -> np.ndarray:
    return a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114


def _laplacian(g: np.ndarray) -> np.ndarray:
    return g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4 * g[1:-1, 1:-1]


def sharpness(g: np.ndarray) -> float:
    # Variance of the Laplacian, squashed to 0..1 (about 0.5 for an ordinary in-focus photo).
    var = float(_laplacian(g).var())
    return 1.0 - math.exp(-var / 300.0)


def exposure(g: np.ndarray) -> float:
    mean = float(g.mean()) / 255.0
    clipped = float(((g < 3) | (g > 252)).mean())
    return max(0.0, 1.0 - 2.0 * abs(mean - 0.5)) * (1.0 - clipped)


def colourfulness(a: np.ndarray) -> float:
    # Hasler and Süsstrunk (2003); ~100 is "extremely colourful".
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    rg, yb = r - g, 0.5 * (r + g) - b
    m = math.sqrt(rg.std() ** 2 + yb.std() ** 2) + 0.3 * math.sqrt(rg.mean() ** 2 + yb.mean() ** 2)
    return min(1.0, m / 100.0)


def noise(g: np.ndarray) -> float:
    # Immerkær's fast noise estimate; 1.0 means clean, 0 very noisy.
    if g.shape[0] < 3 or g.shape[1] < 3:
        return 1.0
    k = (g[:-2, :-2] - 2 * g[:-2, 1:-1] + g[:-2, 2:] - 2 * g[1:-1, :-2] + 4 * g[1:-1, 1:-1]
         - 2 * g[1:-1, 2:] + g[2:, :-2] - 2 * g[2:, 1:-1] + g[2:, 2:])
    sigma = math.sqrt(math.pi / 2) * float(np.abs(k).mean()) / 6.0
    return max(0.0, 1.0 - sigma / 25.0)


def signature(a: np.ndarray) -> tuple[float, ...]:
    """A small colour thumbnail, centred and normalised: close images have cosine near 1."""
    from PIL import Image

    thumb = np.asarray(Image.fromarray(a.astype(np.uint8)).resize((12, 12), Image.BILINEAR), dtype=np.float32)
    v = thumb.reshape(-1) - thumb.mean()
    n = float(np.linalg.norm(v)) or 1.0
    return tuple((v / n).tolist())


class HeuristicScorer:
    name = NAME
    honest_note = "heuristic scorer (no CLIP weights): ranks sharpness, exposure, colour and noise, not faithfulness"
    dedupe_threshold = 0.95

    def __init__(self, weights: dict[str, float] | None = None):
        self.weights = dict(weights or WEIGHTS)

    def score(self, images: Sequence, ideas: Sequence[str], prompts: Sequence[str]) -> list[Scores]:
        out = []
        for image in images:
            a = np.asarray(image.convert("RGB"), dtype=np.float32)
            g = _gray(a)
            values = {
                "sharpness": round(sharpness(g), 5),
                "exposure": round(exposure(g), 5),
                "colourfulness": round(colourfulness(a), 5),
                "noise": round(noise(g), 5),
            }
            total = sum(self.weights.values()) or 1.0
            composite = sum(values[k] * w for k, w in self.weights.items() if k in values) / total
            out.append(Scores(values=values, composite=round(composite, 5), scorer=self.name, embedding=signature(a)))
        return out

    def close(self) -> None:
        pass
