"""`--scorer auto` finds out whether CLIP weights are cached without importing open_clip."""

from __future__ import annotations

import os
import subprocess
import sys

from reverie.scoring.clip_cache import KNOWN


def test_the_known_places_are_open_clips_own():
    import open_clip

    for (model, pretrained), (hf_hub, url) in KNOWN.items():
        cfg = open_clip.get_pretrained_cfg(model, pretrained)
        assert (cfg["hf_hub"], cfg["url"]) == (hf_hub, url), model


def test_the_auto_scorer_without_weights_imports_neither_open_clip_nor_torch(tmp_path):
    code = ("import sys; from reverie.scoring.scorer import make_scorer; s = make_scorer('auto', table={}); "
            "print(s.name, 'open_clip' in sys.modules, 'torch' in sys.modules)")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HOME": str(tmp_path)}  # empty caches
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["heuristic", "False", "False"]
