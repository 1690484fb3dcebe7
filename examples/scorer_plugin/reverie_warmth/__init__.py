"""An example scorer plugin for reverie: the mean of red minus blue, in -1..1 (warm images score high).

Importing this module is cheap; `load` is where a real plugin would read its weights.
"""

from reverie.scoring.plugins import ScorerPlugin


def load(settings):
    import numpy as np

    gain = float(settings.get("gain", 1.0))  # [scoring.plugins.warmth] gain = 2.0 in reverie.toml

    def score(images, prompts):
        out = []
        for image in images:
            a = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
            out.append(gain * float((a[..., 0] - a[..., 2]).mean()))
        return out

    return score


PLUGIN = ScorerPlugin(
    name="warmth",
    load=load,
    # Raw values at the 0, 5, 25, 50, 75, 95 and 100th percentile of typical generated images.
    quantiles=(-1.0, -0.25, -0.08, 0.0, 0.08, 0.25, 1.0),
    role="select",
    weight=0.15,
    # One line: `reverie show --explain` and the web image page say it beside the value.
    description="how warm the colours are (red over blue)",
)
