"""Initial latents with their lowest spatial frequencies set: the engine side of noise-space search.

Each seed's noise is drawn exactly as the pipeline draws it (one CPU generator per seed, float32),
so a spec without components starts from the same noise as before. With components, each
channel's orthonormal 2-D DCT is taken over (H, W), its lowest side x side coefficients are
replaced, and the inverse is taken. An orthonormal DCT of white Gaussian noise is white Gaussian
noise, so components drawn from N(0, 1) keep the noise's distribution: unit variance everywhere.
"""

from __future__ import annotations

import math
from typing import Sequence

from reverie.types import ReverieError


def _dct_matrix(n: int):
    """The orthonormal DCT-II matrix (rows are basis vectors), float64."""
    import torch

    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    m = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m


def side_for(components: Sequence[float], channels: int) -> int:
    """The side of the square of coefficients per channel that `components` fill."""
    per = len(components) // channels if channels else 0
    side = math.isqrt(per) if per > 0 else 0
    if side < 1 or side * side * channels != len(components):
        raise ReverieError(f"{len(components)} noise components do not fill a square per latent channel "
                           f"({channels} channels): the spec was made for another model family")
    return side


def set_lowfreq(latent, components: Sequence[float]):
    """One image's latent (C, H, W) with each channel's lowest side x side DCT coefficients replaced."""
    import torch

    channels, h, w = latent.shape
    side = side_for(components, channels)
    if side > min(h, w):
        raise ReverieError(f"{side}x{side} noise components do not fit a {h}x{w} latent: render larger")
    dh, dw = _dct_matrix(h), _dct_matrix(w)
    x = latent.to(torch.float64)
    coeffs = dh @ x @ dw.T
    coeffs[:, :side, :side] = torch.tensor(components, dtype=torch.float64).reshape(channels, side, side)
    return (dh.T @ coeffs @ dw).to(latent.dtype)


def initial_latents(generators, shape: tuple[int, int, int], components: Sequence[Sequence[float]]):
    """A batch of initial latents, one per generator, drawn as diffusers' randn_tensor draws them
    from a list of CPU generators; an image with components gets its low frequencies set."""
    import torch

    rows = []
    for g, comp in zip(generators, components):
        row = torch.randn((1, *shape), generator=g, device="cpu", dtype=torch.float32)
        rows.append(set_lowfreq(row[0], comp)[None] if comp else row)
    return torch.cat(rows, dim=0)
