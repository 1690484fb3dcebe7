"""Labelled synthetic images: a clean, sharp picture and the defects a scorer must rank below it.

The heuristic's ranking test, its reference calibration and the curation benchmark draw from
here, so "clean" means one thing everywhere. Every maker takes a numpy Generator and a side
length and returns an RGB PIL image; the same seed gives the same pixels.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def clean(rng: np.random.Generator, side: int = 128) -> Image.Image:
    """A two-colour gradient with a few hard-edged shapes on it: in focus, mid exposure, colourful."""
    top, bottom = rng.uniform(40, 215, size=3), rng.uniform(40, 215, size=3)
    t = np.linspace(0.0, 1.0, side)[:, None, None]
    angle = rng.uniform(0, 1)
    ramp = t * angle + np.linspace(0.0, 1.0, side)[None, :, None] * (1 - angle)
    a = (top * (1 - ramp) + bottom * ramp).astype(np.uint8)
    image = Image.fromarray(a)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(4, 9))):
        x, y = rng.uniform(0, side, size=2)
        r = rng.uniform(side * 0.06, side * 0.22)
        colour = tuple(int(c) for c in rng.integers(20, 236, size=3))
        box = [x - r, y - r, x + r, y + r]
        if rng.random() < 0.5:
            draw.ellipse(box, fill=colour)
        else:
            draw.rectangle(box, fill=colour)
    return image


def blurred(rng: np.random.Generator, side: int = 128) -> Image.Image:
    return clean(rng, side).filter(ImageFilter.GaussianBlur(radius=side / 32 * rng.uniform(1.0, 2.0)))


def static(rng: np.random.Generator, side: int = 128) -> Image.Image:
    """Uniform RGB static: every pixel independent."""
    return Image.fromarray(rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8))


def noisy(rng: np.random.Generator, side: int = 128) -> Image.Image:
    """The clean picture under heavy Gaussian noise."""
    a = np.asarray(clean(rng, side), dtype=np.float32) + rng.normal(0, rng.uniform(35, 60), size=(side, side, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def overexposed(rng: np.random.Generator, side: int = 128) -> Image.Image:
    a = np.asarray(clean(rng, side), dtype=np.float32) * rng.uniform(2.2, 3.0) + rng.uniform(60, 110)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def underexposed(rng: np.random.Generator, side: int = 128) -> Image.Image:
    a = np.asarray(clean(rng, side), dtype=np.float32) * rng.uniform(0.06, 0.14)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def flat(rng: np.random.Generator, side: int = 128) -> Image.Image:
    """One colour, nearly: a blank render."""
    colour = rng.uniform(30, 225, size=3)
    a = np.broadcast_to(colour, (side, side, 3)) + rng.normal(0, 0.6, size=(side, side, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


DEFECTS: dict[str, Callable[[np.random.Generator, int], Image.Image]] = {
    "blurred": blurred, "static": static, "noisy": noisy,
    "overexposed": overexposed, "underexposed": underexposed, "flat": flat,
}
KINDS: dict[str, Callable[[np.random.Generator, int], Image.Image]] = {"clean": clean, **DEFECTS}
