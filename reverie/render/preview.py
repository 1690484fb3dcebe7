"""Cheap previews of an image while it renders: the latents mapped straight to RGB.

No VAE runs: a 4-channel SD latent is mapped to RGB by a fixed linear map per family (the well
known approximation ComfyUI and A1111 use for their "latent2rgb" previews); any other latent
(the 16-channel VAEs of Z-Image and Flux, the tiny engine's) shows its first three channels,
each stretched to its own range. Either way it is a hint of the composition, not the picture.
"""

from __future__ import annotations

import base64
import io
from typing import Any, Optional

PREVIEW_EVERY = 2  # steps between previews: each costs one small PNG, nothing on the device
PREVIEW_SIDE = 96

# latent channel -> (R, G, B), per family whose 4-channel VAE they were fitted on.
LATENT_RGB: dict[str, tuple[tuple[float, float, float], ...]] = {
    "sd15": ((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473)),
    "sdxl": ((0.3920, 0.4054, 0.4549), (-0.2634, -0.0196, 0.0653), (0.0568, 0.1687, -0.0755),
             (-0.3112, -0.2359, -0.2076)),
}


def latent_preview(latent: Any, family: str) -> Optional[str]:
    """One image's latent (channels, height, width; a torch tensor) as a small PNG data URL, or
    None when its shape is not an image's (packed Flux latents)."""
    import numpy as np
    from PIL import Image

    if latent is None or getattr(latent, "ndim", 0) != 3:
        return None
    x = latent.detach().float().cpu().numpy()
    factors = LATENT_RGB.get(family)
    if factors is not None and x.shape[0] == len(factors):
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
