"""The held-out judge: one verifier, named by `[scoring] held_out`, that scores every image and is
stored beside the others (as `held_out:NAME`) but never enters the composite, so it never picks.

Search against verifiers raises them whether or not the images got better; a judge the search
never saw tells whether selection generalises. `show`, `lineage` and the report print it.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from reverie.scoring.composite import HELD_OUT_PREFIX, normalise
from reverie.types import ReverieError, Scores

CHOICES = ("pickscore", "hps", "off")
HOW_TO_GET = "`reverie models pull pickscore` adds one"


class HeldOutJudge:
    """A verifier with `score(images, prompts) -> list[float]` under the name it is stored by."""

    def __init__(self, name: str, model):
        self.name = name
        self.key = HELD_OUT_PREFIX + name
        self.model = model

    def add_to(self, scores: Sequence[Scores], images: Sequence, prompts: Sequence[str]) -> list[Scores]:
        """The scores with the judge's value added (images without a prompt have nothing to judge)."""
        idx = [i for i, p in enumerate(prompts) if p.strip()]
        values = self.model.score([images[i] for i in idx], [prompts[i] for i in idx]) if idx else []
        judged = dict(zip(idx, values))
        return [dataclasses.replace(s, values={**s.values, self.key: round(float(judged[i]), 5)}) if i in judged else s
                for i, s in enumerate(scores)]

    def close(self) -> None:
        self.model.close()


def check_choice(name: str) -> str:
    name = (name or "pickscore").lower()
    if name not in CHOICES:
        raise ReverieError(f"[scoring] held_out = {name!r}: use one of {', '.join(CHOICES)}")
    return name


def build_held_out(settings) -> Optional[HeldOutJudge]:
    """The configured judge when its weights are on this machine, else None (no download)."""
    name = check_choice(settings.held_out)
    if name == "pickscore" and settings.pickscore.lower() != "off":
        from reverie.scoring.pickscore import PickScorer, resolve_pickscore

        path = resolve_pickscore(settings.pickscore or None)
        return HeldOutJudge(name, PickScorer(path, device=settings.device or _default_device())) if path else None
    if name == "hps" and settings.hps_weights.lower() != "off":
        from reverie.scoring.hps import HPS_MODEL, HpsScorer, resolve_hps_weights

        path = resolve_hps_weights(settings.hps_weights or None)
        model = _hps_model(settings) or HPS_MODEL
        return HeldOutJudge(name, HpsScorer(path, model_name=model, device=settings.device or _default_device())) if path else None
    return None


def _default_device() -> str:
    from reverie.scoring.clip import default_device

    return default_device()


def _hps_model(settings) -> str:
    from reverie.scoring.clip import register_config

    return register_config(settings.hps_config) if settings.hps_config else ""


def describe(judge: Optional[HeldOutJudge]) -> str:
    """One line for the scorer's notice: what the held-out judge is, or that there is none and how to get one."""
    if judge is None:
        return f"no held-out judge ({HOW_TO_GET}; it is scored and shown, never used to select)"
    return f"held-out judge: {judge.name} (scored and shown, never used to select)"


def held_out_value(scores: Optional[Scores]) -> Optional[tuple[str, float, float]]:
    """(judge name, raw value, percentile) of a stored render's held-out judge, or None."""
    if scores is None:
        return None
    for key, value in scores.values.items():
        if key.startswith(HELD_OUT_PREFIX):
            name = key[len(HELD_OUT_PREFIX):]
            return name, value, normalise(name, value)
    return None


def selection_check(kept: Sequence[Optional[Scores]], rest: Sequence[Optional[Scores]]) -> str:
    """One line on whether selection generalises: the held-out judge's mean percentile for the
    kept images against the rest of the run, or that there is no judge and how to get one."""
    judged_kept = [j for j in map(held_out_value, kept) if j]
    judged_rest = [j for j in map(held_out_value, rest) if j]
    if not judged_kept and not judged_rest:
        return f"held-out judge: none ({HOW_TO_GET}; `[scoring] held_out` names it)"
    name = (judged_kept or judged_rest)[0][0]
    line = f"held-out judge {name} (never used to select): kept {_mean([j[2] for j in judged_kept])}"
    return line + (f", the other {len(judged_rest)} renders {_mean([j[2] for j in judged_rest])}" if judged_rest else "")


def _mean(percentiles: list[float]) -> str:
    if not percentiles:
        return "-"
    return f"mean percentile {100 * sum(percentiles) / len(percentiles):.0f}"
