"""One reproduce: an image rendered again from its own spec, its pixels compared with the file.

`reverie reproduce` (a fresh engine, from the PNG's metadata alone) and the web studio's
reproduce button (the server's warm engine) both come here. Pixels depend on how many seeds
shared the forward pass (never on which), so the spec is rendered in a batch of the shape it
was recorded with, filler seeds after it; only the first image is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from reverie.types import EngineOutput, RenderSpec, ReverieError


@dataclass(frozen=True)
class Comparison:
    """How the new render compares with the file: identical pixels, or by how much they differ."""

    match: bool
    max_diff: Optional[int]  # None when the sizes differ
    mean_diff: Optional[float]
    before_size: tuple[int, int]
    after_size: tuple[int, int]
    image: Any  # the new render (a PIL image)

    @property
    def message(self) -> str:
        if self.max_diff is None:
            (bw, bh), (aw, ah) = self.before_size, self.after_size
            return f"sizes differ ({bw}x{bh} vs {aw}x{ah})"
        return "pixels identical" if self.match else f"max pixel difference {self.max_diff}"


def padded(spec: RenderSpec, shape: Optional[int]) -> list[RenderSpec]:
    """The spec and shape-1 filler seeds after it: one forward pass of the recorded batch size."""
    return [spec] + [spec.with_(seed=spec.seed + 1 + i) for i in range(max(1, shape or 1) - 1)]


def reproduce(render: Callable[[Sequence[RenderSpec]], list[EngineOutput]], spec: RenderSpec, *,
              batch_size: Optional[int], original: str | Path) -> Comparison:
    """Render `spec` again in a batch of `batch_size` (None: alone) with `render`, and compare it
    with the image file `original`."""
    import numpy as np
    from PIL import Image

    output = render(padded(spec, batch_size))[0]
    if output.error or output.image is None:
        raise ReverieError(f"the engine could not render it: {output.error}")
    with Image.open(original) as im:
        before = np.asarray(im.convert("RGB"), dtype=np.int16)
    after = np.asarray(output.image.convert("RGB"), dtype=np.int16)
    sizes = {"before_size": (before.shape[1], before.shape[0]), "after_size": (after.shape[1], after.shape[0]),
             "image": output.image}
    if before.shape != after.shape:
        return Comparison(match=False, max_diff=None, mean_diff=None, **sizes)
    diff = np.abs(before - after)
    return Comparison(match=int(diff.max()) == 0, max_diff=int(diff.max()), mean_diff=float(diff.mean()), **sizes)
