"""Scorers chosen by name: `score(images, ideas, prompts) -> list[Scores]`, batched.

"clip" is CLIP faithfulness (image vs the user's idea) and prompt match (image vs the expanded
prompt), plus the LAION aesthetic predictor and PickScore when their weights are on disk.
"heuristic" needs no weights. "auto" is "clip" when its weights are present, else "heuristic",
and says which in `honest_note`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Protocol, Sequence

from reverie.scoring.composite import DEFAULT_WEIGHTS, REFERENCE_VERSION, check_weights, composite
from reverie.scoring.held_out import HeldOutJudge, build_held_out, check_choice
from reverie.scoring.portfolio import DEFAULT_DIVERSITY
from reverie.scoring.taste import Taste
from reverie.types import ReverieError, Scores

SCORERS = ("auto", "heuristic", "clip")
DEFAULT_BATCH_SIZE = 16
DEFAULT_DEDUPE_THRESHOLD = 0.95
# Settings an environment variable can give (they override reverie.toml, options override both).
ENV = {
    "clip_model": "REVERIE_CLIP_MODEL",
    "clip_config": "REVERIE_CLIP_CONFIG",
    "clip_weights": "REVERIE_CLIP_WEIGHTS",
    "aesthetic_weights": "REVERIE_AESTHETIC_WEIGHTS",
    "pickscore": "REVERIE_PICKSCORE",
    "hps_weights": "REVERIE_HPS_WEIGHTS",
    "held_out": "REVERIE_HELD_OUT",
}


class Scorer(Protocol):
    name: str
    honest_note: str
    dedupe_threshold: float
    held_out: Optional[HeldOutJudge]  # stored and shown, never part of the composite

    def score(self, images: Sequence, ideas: Sequence[str], prompts: Sequence[str]) -> list[Scores]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ScoringSettings:
    clip_model: str = ""
    clip_config: str = ""
    clip_weights: str = ""
    aesthetic_weights: str = ""
    pickscore: str = ""  # a folder, "" to use the cache when present, "off" to never use it
    hps_weights: str = ""  # HPS v2.1 checkpoint, "" to use the cache when present, "off" to never use it
    hps_config: str = ""  # an open_clip config JSON for HPS other than ViT-H-14 (tests)
    held_out: str = "pickscore"  # the judge never used to select: pickscore, hps or off
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    batch_size: int = DEFAULT_BATCH_SIZE
    device: str = ""
    dedupe_threshold: float = DEFAULT_DEDUPE_THRESHOLD
    diversity: float = DEFAULT_DIVERSITY  # the kept set's MMR weight (scoring.portfolio)


def scoring_settings(table: Optional[dict] = None, **options: Any) -> ScoringSettings:
    """Merge the `[scoring]` table, the environment and explicit options, in that order."""
    merged: dict[str, Any] = dict(table or {})
    merged.update({key: os.environ[var] for key, var in ENV.items() if os.environ.get(var)})
    merged.update({k: v for k, v in options.items() if v is not None})
    known = set(ScoringSettings.__dataclass_fields__)
    unknown = sorted(set(merged) - known)
    if unknown:
        raise ReverieError(f"unknown [scoring] setting {unknown[0]!r}: use one of {', '.join(sorted(known))}")
    weights = {**DEFAULT_WEIGHTS, **check_weights(merged.pop("weights", {}) or {})}
    try:
        batch_size = int(merged.pop("batch_size", DEFAULT_BATCH_SIZE))
        threshold = float(merged.pop("dedupe_threshold", DEFAULT_DEDUPE_THRESHOLD))
        diversity = float(merged.pop("diversity", DEFAULT_DIVERSITY))
    except (TypeError, ValueError):
        raise ReverieError("[scoring] batch_size must be a whole number, dedupe_threshold a number such as 0.95 "
                           "and diversity a number such as 0.3") from None
    if not 0.0 <= diversity <= 2.0:
        raise ReverieError(f"[scoring] diversity = {diversity}: use 0 (plain top-K) to 2; 0.3 is the default")
    if batch_size < 1:
        raise ReverieError(f"[scoring] batch_size = {batch_size}: use 1 or more")
    if not -1.0 <= threshold <= 1.0:
        raise ReverieError(f"[scoring] dedupe_threshold = {threshold}: use a cosine between -1 and 1, e.g. 0.95")
    # `pickscore = false` in TOML means "off"; every other setting is a string.
    strings = {k: "off" if v is False else str(v) for k, v in merged.items()}
    check_choice(strings.get("held_out", "pickscore"))
    return ScoringSettings(**strings, weights=weights, batch_size=batch_size,
                           dedupe_threshold=threshold, diversity=diversity)


class ClipScorer:
    """CLIP + aesthetics (+ PickScore): one CLIP image forward pass per batch serves both."""

    def __init__(self, clip, aesthetic=None, pickscore=None, weights: Optional[dict[str, float]] = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, honest_note: str = "", hps=None,
                 held_out: Optional[HeldOutJudge] = None, weighting: str = "default"):
        if aesthetic is not None and aesthetic.input_size != clip.embed_dim:
            raise ReverieError(f"the aesthetic predictor takes {aesthetic.input_size}-wide embeddings but CLIP "
                               f"{clip.model_name} gives {clip.embed_dim}: use ViT-L-14-quickgelu with it")
        self.clip = clip
        self.aesthetic = aesthetic.to(clip.device) if aesthetic is not None else None
        self.pickscore = pickscore
        self.hps = hps
        self.held_out = held_out
        self.weights = dict(weights or DEFAULT_WEIGHTS)
        self.weighting = weighting  # "default", or "taste N" when the weights were learnt from picks
        self.batch_size = batch_size
        self.name = ("clip" + ("+aesthetic" if aesthetic is not None else "") + ("+pickscore" if pickscore is not None else "")
                     + ("+hps" if hps is not None else ""))
        self.honest_note = honest_note
        self.dedupe_threshold = DEFAULT_DEDUPE_THRESHOLD
        self._text_cache: dict[str, Any] = {}

    def _texts(self, texts: Sequence[str]):
        import torch

        missing = list(dict.fromkeys(t for t in texts if t not in self._text_cache))
        if missing:
            if len(self._text_cache) > 4096:  # ideas and prompts repeat within a run, not forever
                self._text_cache.clear()
            for text, emb in zip(missing, self.clip.encode_texts(missing)):
                self._text_cache[text] = emb
        return torch.stack([self._text_cache[t] for t in texts])

    def score(self, images: Sequence, ideas: Sequence[str], prompts: Sequence[str]) -> list[Scores]:
        import torch

        if not (len(images) == len(ideas) == len(prompts)):
            raise ReverieError(f"score() got {len(images)} images, {len(ideas)} ideas and {len(prompts)} prompts: pass one of each per image")
        out: list[Scores] = []
        for start in range(0, len(images), self.batch_size):
            batch = slice(start, start + self.batch_size)
            chunk = list(images[batch])
            image_emb = self.clip.encode_images(chunk)
            columns = {
                "faithfulness": (image_emb * self._texts(ideas[batch])).sum(-1),
                "prompt_match": (image_emb * self._texts(prompts[batch])).sum(-1),
            }
            if self.aesthetic is not None:
                with torch.no_grad():
                    columns["aesthetic"] = self.aesthetic(image_emb)
            if self.pickscore is not None:
                columns["pickscore"] = torch.tensor(self.pickscore.score(chunk, prompts[batch]))
            if self.hps is not None:
                columns["hps"] = torch.tensor(self.hps.score(chunk, prompts[batch]))
            columns = {k: v.float().cpu().tolist() for k, v in columns.items()}
            embeddings = image_emb.cpu().tolist()
            # Nothing to compare with (an image without a prompt): leave that similarity out.
            texts = {"faithfulness": ideas[batch], "prompt_match": prompts[batch]}
            for i in range(len(chunk)):
                values = {k: round(float(v[i]), 5) for k, v in columns.items()
                          if not (k in texts and not texts[k][i].strip())}
                total, normalised = composite(values, self.weights)
                out.append(Scores(values=values, composite=round(total, 5), scorer=self.name,
                                  details={"normalised": {k: round(v, 5) for k, v in normalised.items()},
                                           "reference": REFERENCE_VERSION, "clip_model": self.clip.model_name,
                                           "weighting": self.weighting},
                                  embedding=tuple(embeddings[i])))
        return self.held_out.add_to(out, images, prompts) if self.held_out is not None else out

    def close(self) -> None:
        self.clip.close()
        for part in (self.pickscore, self.hps, self.held_out):
            if part is not None:
                part.close()


def build_clip_scorer(settings: ScoringSettings, held_out: Optional[HeldOutJudge] = None,
                      taste: Optional[Taste] = None) -> ClipScorer:
    """Load CLIP (required), the aesthetic predictor, PickScore and HPS (each when present and not
    the held-out judge)."""
    from reverie.scoring.aesthetic import cached_aesthetic_weights, load_aesthetic
    from reverie.scoring.clip import DEFAULT_MODEL, ClipModel, default_device, register_config, resolve_clip_weights

    model_name = register_config(settings.clip_config) if settings.clip_config else (settings.clip_model or DEFAULT_MODEL)
    if settings.clip_config and settings.clip_model and settings.clip_model != model_name:
        raise ReverieError(f"clip_model {settings.clip_model!r} differs from the config file's name {model_name!r}: set one of them")
    weights = resolve_clip_weights(model_name, settings.clip_weights or None)
    device = settings.device or default_device()
    aesthetic_path = settings.aesthetic_weights or cached_aesthetic_weights()
    aesthetic = load_aesthetic(aesthetic_path) if aesthetic_path else None
    pickscore = None
    if settings.pickscore.lower() != "off" and check_choice(settings.held_out) != "pickscore":
        from reverie.scoring.pickscore import PickScorer, resolve_pickscore

        pick_path = resolve_pickscore(settings.pickscore or None)
        pickscore = PickScorer(pick_path, device=device) if pick_path else None
    hps = None
    if settings.hps_weights.lower() != "off" and check_choice(settings.held_out) != "hps":
        from reverie.scoring.held_out import _hps_model
        from reverie.scoring.hps import HPS_MODEL, HpsScorer, resolve_hps_weights

        hps_path = resolve_hps_weights(settings.hps_weights or None)
        hps = HpsScorer(hps_path, model_name=_hps_model(settings) or HPS_MODEL, device=device) if hps_path else None
    clip = ClipModel(model_name, weights=weights, device=device)
    note = "" if aesthetic is not None else (f"CLIP {model_name} scorer without aesthetics: no aesthetic weights "
                                             f"(run `reverie models pull laion-aesthetic-v2`)")
    weights, weighting = (taste.weights, taste.label) if taste is not None else (settings.weights, "default")
    return ClipScorer(clip, aesthetic, pickscore, weights, settings.batch_size, honest_note=note, hps=hps,
                      held_out=held_out, weighting=weighting)


def make_scorer(name: str = "auto", home: Optional[str | os.PathLike] = None, table: Optional[dict] = None,
                tastes: Optional[Mapping[str, Taste]] = None, **options: Any) -> Scorer:
    """A scorer by name. Settings come from `table` (else reverie.toml's [scoring] in `home`),
    the REVERIE_* environment variables and `options`. `tastes` (family -> learnt weighting,
    from the store) replace the configured weights of the scorer of their family."""
    if name not in SCORERS:
        raise ReverieError(f"unknown scorer {name!r}: use one of {', '.join(SCORERS)}")
    from reverie.scoring.heuristic import WEIGHTS as HEURISTIC_WEIGHTS, HeuristicScorer

    if table is None:
        from reverie.config import load_config

        table = load_config(home).get("scoring", {})
    if not isinstance(table, dict):
        raise ReverieError("[scoring] in reverie.toml must be a table: write it as a [scoring] section")
    table = dict(table)
    plugin_table = table.pop("plugins", {}) or {}
    if not isinstance(plugin_table, dict):
        raise ReverieError("[scoring.plugins] in reverie.toml must be a table: off = [\"NAME\"], [scoring.plugins.NAME] ...")
    settings = scoring_settings(table, **options)
    tastes = tastes or {}
    heuristic_weights = {**HEURISTIC_WEIGHTS, **{k: v for k, v in settings.weights.items() if k in HEURISTIC_WEIGHTS}}
    heuristic_taste = tastes.get("heuristic")
    if heuristic_taste is not None:
        heuristic_weights = dict(heuristic_taste.weights)
    heuristic_weighting = heuristic_taste.label if heuristic_taste is not None else "default"
    chosen: Scorer
    if name == "heuristic":
        chosen = HeuristicScorer(heuristic_weights, held_out=build_held_out(settings), weighting=heuristic_weighting)
        chosen.honest_note = "heuristic scorer (as asked): ranks sharpness, noise, exposure, contrast and colour, not faithfulness"
    elif name == "auto" and not (settings.clip_weights or settings.clip_config) and not clip_weights_cached(settings):
        chosen = HeuristicScorer(heuristic_weights, held_out=build_held_out(settings), weighting=heuristic_weighting)
        chosen.honest_note = ("heuristic scorer (no CLIP weights on this machine; `reverie models pull clip-vit-l-14` "
                              "and `reverie models pull laion-aesthetic-v2` enable CLIP + aesthetic scoring): "
                              "ranks sharpness, noise, exposure, contrast and colour, not faithfulness")
    else:
        chosen = build_clip_scorer(settings, build_held_out(settings), taste=tastes.get("clip"))
    # Callers that keep a diverse set (reverie score, batch keep) read the configured threshold here.
    chosen.dedupe_threshold = settings.dedupe_threshold
    from reverie.scoring.plugins import with_plugins

    family = "heuristic" if chosen.name.startswith("heuristic") else "clip"
    taste = tastes.get(family)
    return with_plugins(chosen, plugin_table, taste.weights if taste is not None else settings.weights)


def clip_weights_cached(settings: ScoringSettings) -> bool:
    from reverie.scoring.clip_cache import DEFAULT_MODEL, cached_clip_weights

    return cached_clip_weights(settings.clip_model or DEFAULT_MODEL) is not None
