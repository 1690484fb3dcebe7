"""Scores of an edit, beside the usual ones: did it do what it was asked, and keep the rest?

- Instruction faithfulness, `edit_direction`: CLIP directional similarity (StyleGAN-NADA,
  InstructPix2Pix): the cosine between the change in image embedding (edit - source) and the
  change in text embedding (target caption - source caption).
- Preservation of the source: `preservation_clip`, the cosine of the two image embeddings; and,
  with weights or without, `preservation_structure` (SSIM of the grey images outside the mask)
  and `preservation_pixels` (1 - mean absolute difference outside the mask). The last two are
  measurements of pixels, not of meaning: the heuristic path has only them, and says so.

An edit run's composite blends the usual composite with these (EDIT_WEIGHTS), so an edit that
ignores the source, or one that changes nothing, ranks below one that does what was asked.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

WORK_SIDE = 256  # measured on a copy at most this wide: structure, not fine noise
# Shares of an edit run's composite: the usual composite, then the edit's own components (those
# present; the heuristic path has no direction, and its preservation share goes to pixels+structure).
EDIT_WEIGHTS = {"base": 0.5, "edit_direction": 0.2, "preservation_clip": 0.1, "preservation_structure": 0.1,
                "preservation_pixels": 0.1}
HEURISTIC_NOTE = "edit preservation by pixels and structure (heuristic: no CLIP weights, so no instruction faithfulness)"


def _grey(image, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(image.convert("L").resize(size, Image.Resampling.BOX), dtype=np.float64) / 255.0


def _work_size(image) -> tuple[int, int]:
    scale = min(1.0, WORK_SIDE / max(image.size))
    return max(8, round(image.width * scale)), max(8, round(image.height * scale))


def _keep_weights(mask, size: tuple[int, int]) -> np.ndarray:
    """1 where the source is to be kept (outside the mask), 0 where it may change."""
    if mask is None:
        return np.ones((size[1], size[0]))
    return 1.0 - _grey(mask, size)


def pixel_preservation(source, image, mask=None) -> float:
    """1 - mean absolute grey difference over what was to be kept; 1 is untouched."""
    size = _work_size(source)
    keep = _keep_weights(mask, size)
    if keep.sum() <= 0:
        return 1.0
    diff = np.abs(_grey(source, size) - _grey(image, size))
    return float(1.0 - (diff * keep).sum() / keep.sum())


def structure_preservation(source, image, mask=None, window: int = 7) -> float:
    """Mean SSIM (grey, box window) over what was to be kept, clipped to 0..1."""
    from numpy.lib.stride_tricks import sliding_window_view

    size = _work_size(source)
    a, b = _grey(source, size), _grey(image, size)
    w = min(window, a.shape[0], a.shape[1])

    def local_mean(x):
        return sliding_window_view(x, (w, w)).mean(axis=(-1, -2))

    mu_a, mu_b = local_mean(a), local_mean(b)
    var_a = local_mean(a * a) - mu_a ** 2
    var_b = local_mean(b * b) - mu_b ** 2
    cov = local_mean(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ssim = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    keep = local_mean(_keep_weights(mask, size))
    if keep.sum() <= 0:
        return 1.0
    return float(np.clip((ssim * keep).sum() / keep.sum(), 0.0, 1.0))


def directional_similarity(source_emb: Sequence[float], edit_emb: Sequence[float], source_text: Sequence[float],
                           target_text: Sequence[float]) -> float:
    """cos(edit - source, target text - source text), -1..1; 0 when either change is nil."""
    di = np.asarray(edit_emb, dtype=np.float64) - np.asarray(source_emb, dtype=np.float64)
    dt = np.asarray(target_text, dtype=np.float64) - np.asarray(source_text, dtype=np.float64)
    n = float(np.linalg.norm(di) * np.linalg.norm(dt))
    return float(di @ dt / n) if n > 1e-12 else 0.0


def target_caption(source_caption: str, instruction: str) -> str:
    return f"{source_caption.rstrip(' .')}, {instruction}" if source_caption else instruction


def edit_components(source, images: Sequence, *, instruction: str, source_caption: str = "", mask=None,
                    clip=None) -> list[dict[str, float]]:
    """The edit's components for each image; with a CLIP model (`encode_images`, `encode_texts`),
    the direction and the embedding preservation as well."""
    rows = [{"preservation_pixels": round(pixel_preservation(source, im, mask), 5),
             "preservation_structure": round(structure_preservation(source, im, mask), 5)} for im in images]
    if clip is not None and images:
        embs = clip.encode_images([source, *images]).cpu().numpy()
        texts = clip.encode_texts([source_caption or "a picture", target_caption(source_caption, instruction)]).cpu().numpy()
        for row, emb in zip(rows, embs[1:]):
            row["edit_direction"] = round(directional_similarity(embs[0], emb, texts[0], texts[1]), 5)
            row["preservation_clip"] = round(float(np.dot(embs[0], emb)), 5)
    return rows


def edit_composite(base: float, components: dict[str, float], weights: Optional[dict[str, float]] = None) -> float:
    """The composite of an edit run: the usual composite blended with the edit's components (the
    direction mapped from -1..1 to 0..1); shares of components that are absent are left out."""
    weights = weights or EDIT_WEIGHTS
    values = {"base": base, **components}
    if "edit_direction" in values:
        values["edit_direction"] = min(1.0, max(0.0, 0.5 + values["edit_direction"]))
    used = {k: w for k, w in weights.items() if k in values and w > 0}
    total = sum(used.values())
    return round(sum(w * values[k] for k, w in used.items()) / total, 5) if total > 0 else base
