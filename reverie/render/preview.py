"""Cheap previews of an image while it renders: the latents mapped straight to RGB.

No VAE runs: a 4-channel SD latent is mapped to RGB by its family's fixed linear map (the well
known approximation ComfyUI and A1111 use for their "latent2rgb" previews); any other latent
(the 16-channel VAEs of Z-Image and Flux, the tiny engine's) shows its first three channels,
each stretched to its own range. Either way it is a hint of the composition, not the picture.
"""

from __future__ import annotations

import base64
import io
from typing import Any, Optional

from reverie.profiles import FAMILIES

PREVIEW_EVERY = 2  # steps between previews: each costs one small PNG, nothing on the device
PREVIEW_SIDE = 96


def latent_preview(latent: Any, family: str) -> Optional[str]:
    """One image's latent (channels, height, width; a torch tensor) as a small PNG data URL, or
    None when its shape is not an image's (packed Flux latents)."""
    import numpy as np
    from PIL import Image

    if latent is None or getattr(latent, "ndim", 0) != 3:
        return None
    x = latent.detach().float().cpu().numpy()
    # The family's own latent -> RGB map (reverie.profiles: Family.latent_rgb), where it has one.
    factors = FAMILIES[family].latent_rgb if family in FAMILIES else ()
    if factors and x.shape[0] == len(factors):
        rgb = np.einsum("chw,cr->hwr", x, np.asarray(factors, dtype=np.float32))
        rgb = (rgb + 1.0) * 127.5
    else:
        rgb = x[:3].transpose(1, 2, 0)
        if rgb.shape[2] < 3:
            rgb = np.repeat(rgb[:, :, :1], 3, axis=2)
        low, high = rgb.min(axis=(0, 1)), rgb.max(axis=(0, 1))
        rgb = (rgb - low) / np.maximum(high - low, 1e-6) * 255.0
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    scale = PREVIEW_SIDE / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
