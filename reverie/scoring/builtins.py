"""reverie's own score components, as entries of the scorer registry (scoring/plugins.py).

Each built-in component is a `ScorerPlugin` like a third-party one: its name, its scale
(quantiles from composite.REFERENCES, or None for the heuristic ones that are 0..1 qualities
already), its role and default share, and a `load` that scores images with that component
alone. The `family` says which built-in scorer computes it in one shared pass (one CLIP image
forward serves faithfulness, prompt match and the aesthetic head); that is how `make`, `batch` and
`reverie score` run them, while `load` is what a plugin-style caller (a bench, another tool) uses.
PickScore and HPS may select or, chosen by `[scoring] held_out`, only judge.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from reverie.scoring import heuristic
from reverie.scoring.composite import DEFAULT_WEIGHTS, REFERENCES
from reverie.types import ReverieError

CLIP_DESCRIPTIONS = {
    "faithfulness": "CLIP cosine of the image and the person's idea",
    "prompt_match": "CLIP cosine of the image and the written prompt",
    "aesthetic": "the LAION aesthetic predictor v2 on the CLIP image embedding",
    "pickscore": "PickScore v1 (Kirstain et al. 2023); [scoring] held_out = \"pickscore\" makes it judge only",
    "hps": "HPS v2.1 (Wu et al. 2023); [scoring] held_out = \"hps\" makes it judge only",
}
HEURISTIC_DESCRIPTIONS = {
    "sharpness": "edge strength of the luminance",
    "noise": "absence of high-frequency noise in flat areas",
    "exposure": "mid-tones neither crushed nor blown",
    "contrast": "spread of the luminance",
    "colourfulness": "Hasler and Suesstrunk colourfulness",
}


def _heuristic_load(name: str):
    def load(settings: Mapping[str, Any]):
        return lambda images, prompts: [heuristic.measure(im)[name] for im in images]
    return load


def clip_model(settings: Mapping[str, Any]):
    """The CLIP model the [scoring] settings name (clip_model or clip_config, clip_weights, device)."""
    from reverie.scoring.clip import DEFAULT_MODEL, ClipModel, register_config, resolve_clip_weights

    # The same [scoring] keys as the clip scorer's: a config file names its own model.
    model = (register_config(settings["clip_config"]) if settings.get("clip_config")
             else str(settings.get("clip_model") or DEFAULT_MODEL))
    return ClipModel(model, weights=resolve_clip_weights(model, settings.get("clip_weights") or None),
                     device=settings.get("device") or None)


def _cosine_load(settings: Mapping[str, Any]):
    clip = clip_model(settings)

    def score(images: Sequence, prompts: Sequence[str]) -> list[float]:
        return (clip.encode_images(list(images)) * clip.encode_texts(list(prompts))).sum(-1).cpu().tolist()
    return score


def _aesthetic_load(settings: Mapping[str, Any]):
    import torch

    from reverie.scoring.aesthetic import cached_aesthetic_weights, load_aesthetic

    path = settings.get("aesthetic_weights") or cached_aesthetic_weights()
    if not path:
        raise ReverieError("no aesthetic weights on this machine: run `reverie models pull laion-aesthetic-v2`")
    clip = clip_model(settings)
    head = load_aesthetic(path).to(clip.device)

    def score(images: Sequence, prompts: Sequence[str]) -> list[float]:
        with torch.no_grad():
            return head(clip.encode_images(list(images))).float().reshape(-1).cpu().tolist()
    return score


def _pickscore_load(settings: Mapping[str, Any]):
    from reverie.scoring.pickscore import PickScorer, resolve_pickscore

    path = resolve_pickscore(settings.get("pickscore") or None)
    if not path:
        raise ReverieError("PickScore is not on this machine: run `reverie models pull pickscore`")
    return PickScorer(path, device=settings.get("device") or "cpu").score


def _hps_load(settings: Mapping[str, Any]):
    from reverie.scoring.hps import HpsScorer, resolve_hps_weights

    path = resolve_hps_weights(settings.get("hps_weights") or None)
    if not path:
        raise ReverieError("HPS is not on this machine: run `reverie models pull hps`")
    return HpsScorer(path, device=settings.get("device") or "cpu").score


CLIP_LOADS = {"faithfulness": _cosine_load, "prompt_match": _cosine_load, "aesthetic": _aesthetic_load,
              "pickscore": _pickscore_load, "hps": _hps_load}


def built_in_entries() -> list[dict[str, Any]]:
    """Every built-in component's registry fields (clip family first, in the default weighting's
    order); plugins.built_ins() makes them ScorerPlugins (this module never imports the registry)."""
    entries = [dict(name=name, load=CLIP_LOADS[name], quantiles=tuple(REFERENCES[name]), role="select",
                    weight=weight, description=CLIP_DESCRIPTIONS[name], family="clip")
               for name, weight in DEFAULT_WEIGHTS.items()]
    entries += [dict(name=name, load=_heuristic_load(name), quantiles=None, role="select", weight=weight,
                     description=HEURISTIC_DESCRIPTIONS.get(name, name), family="heuristic")
                for name, weight in heuristic.WEIGHTS.items()]
    return entries
