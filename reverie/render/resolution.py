"""Aspect ratio and megapixels to width and height: the family's multiple, caps and published sizes."""

from __future__ import annotations

import math
import re

from reverie.types import ReverieError

_ASPECT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[:x/]\s*(\d+(?:\.\d+)?)\s*$")
MIN_MEGAPIXELS = 0.01
MAX_MEGAPIXELS = 4.0


def parse_aspect(aspect: str) -> float:
    """'2:3' -> 0.666… (width / height). Also accepts '2x3' and '2/3'."""
    m = _ASPECT.match(str(aspect))
    if not m:
        raise ReverieError(f"bad aspect {aspect!r}: write it as W:H, for example 1:1, 2:3 or 16:9")
    w, h = float(m.group(1)), float(m.group(2))
    if w <= 0 or h <= 0:
        raise ReverieError(f"bad aspect {aspect!r}: both sides must be positive, for example 2:3")
    ratio = w / h
    if not (1 / 8 <= ratio <= 8):
        raise ReverieError(f"bad aspect {aspect!r}: keep it between 1:8 and 8:1")
    return ratio


def check_megapixels(megapixels: float) -> float:
    if not (MIN_MEGAPIXELS <= float(megapixels) <= MAX_MEGAPIXELS):
        raise ReverieError(
            f"bad megapixels {megapixels}: use a value from {MIN_MEGAPIXELS} to {MAX_MEGAPIXELS} (1.0 is about 1024x1024)"
        )
    return float(megapixels)


def size_for(aspect: str, megapixels: float, multiple: int, max_side: int,
             buckets: tuple[tuple[int, int], ...] = ()) -> tuple[int, int]:
    """Width and height for an aspect and pixel budget, each a multiple of `multiple`, each
    side at most `max_side` (the shape is kept when a cap applies). Where the family publishes
    sizes (`buckets`), one with the same aspect and about the same pixel count is taken as it is."""
    ratio = parse_aspect(aspect)
    pixels = check_megapixels(megapixels) * 1024 * 1024
    bucket = _bucket(buckets, ratio, pixels, multiple, max_side)
    if bucket:
        return bucket
    width = math.sqrt(pixels * ratio)
    height = width / ratio
    scale = min(1.0, max_side / max(width, height))
    width, height = width * scale, height * scale

    def snap(x: float) -> int:
        return max(multiple, int(round(x / multiple)) * multiple)

    w, h = snap(width), snap(height)
    while w > max_side:
        w -= multiple
    while h > max_side:
        h -= multiple
    return w, h


def _bucket(buckets, ratio: float, pixels: float, multiple: int, max_side: int) -> tuple[int, int] | None:
    """A published size within 3% of the aspect and 20% of the pixel count that fits the caps."""
    for w, h in buckets:
        if (abs((w / h) / ratio - 1) <= 0.03 and abs(w * h / pixels - 1) <= 0.2 and max(w, h) <= max_side
                and w % multiple == 0 and h % multiple == 0):
            return w, h
    return None
