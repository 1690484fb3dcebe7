"""One curation: which renders of a run to show or keep, for every way in.

`best(store, run_id, k, ...)` answers "the best images of a run" for make, chat, a batch's kept
set and contact sheet, serve's OpenAI endpoint and pages, and `reverie show` / `export`:
- the VLM judge's final pick (when a [judge] is configured and answered) leads;
- the rest follow by composite score, best first;
- a render whose pixel signature (a coarse colour layout, scoring/heuristic.signature; not a
  learnt embedding) is closer than the home's near-duplicate threshold to one already chosen is
  left out; with `fill`, when fewer than k distinct images exist, the best of those left out
  fill the set and are named as near-duplicates.

The threshold is the home's `[scoring] dedupe_threshold` (`near_duplicate_threshold(config)`),
the one place it is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from reverie.types import Render


def near_duplicate_threshold(config: Optional[Mapping[str, Any]]) -> float:
    """The cosine between two pixel signatures above which two renders are near-duplicates:
    the home's [scoring] dedupe_threshold, or the default."""
    from reverie.scoring.scorer import scoring_settings

    return scoring_settings((config or {}).get("scoring")).dedupe_threshold


@dataclass(frozen=True)
class Curated:
    """A run's chosen renders, best first (the judge's pick leading), and which of them only
    filled the set although they nearly duplicate a better one."""

    renders: list[Render]
    near_duplicates: frozenset[int] = field(default_factory=frozenset)
    basis: str = ""  # what the portfolio's similarity was measured on: CLIP or PIXEL ("" for plain top-K)


CLIP = "CLIP image embeddings"
PIXEL = "pixel signatures: colour layout, not content"
# render list -> one CLIP image embedding each (None where a file cannot be read)
Embed = Callable[[list[Render]], list[Optional[tuple]]]


class SignatureCache:
    """Pixel signatures of the renders a studio stored, taken from the images in memory as they
    arrive so that curating need not decode the PNGs again. Bounded: a server that runs for
    weeks keeps the newest `size` (older ones are read from their files when asked for)."""

    def __init__(self, size: int = 10_000):
        import threading
        from collections import OrderedDict

        self.size = size
        self._items: "OrderedDict[int, tuple]" = OrderedDict()
        self._lock = threading.Lock()

    def __setitem__(self, render_id: int, signature: tuple) -> None:
        with self._lock:
            self._items[render_id] = signature
            self._items.move_to_end(render_id)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def get(self, render_id: int, default: Optional[tuple] = None) -> Optional[tuple]:
        with self._lock:
            return self._items.get(render_id, default)

    def __len__(self) -> int:
        return len(self._items)


def curate(store, run_id: str, k: int, *, threshold: float, signatures: Optional[dict[int, tuple]] = None,
           fill: bool = False, diversity: float = 0.0, embed: Optional[Embed] = None) -> Curated:
    """The run's best k (see the module docstring). `signatures` (render id -> pixel signature)
    spares decoding PNGs already seen in memory; missing ones are read from the files.

    With `diversity` above 0 the set is a portfolio: after the lead, each next image is the one
    with the best composite minus `diversity` times its largest similarity to those already
    kept (maximal marginal relevance, scoring/portfolio.py), among the best PORTFOLIO_POOL * k."""
    signatures = signatures if signatures is not None else {}
    ranked = sorted((r for r in store.renders(run_id) if r.scores is not None), key=lambda r: (-r.scores.composite, r.id))
    chosen = store.judge_pick(run_id)
    if chosen is not None:
        pick = next((r for r in ranked if r.id == chosen["render_id"]), None) or store.render_by_id(chosen["render_id"])
        ranked = [pick] + [r for r in ranked if r.id != pick.id]
    if not ranked or k < 1:
        return Curated([])
    basis = ""
    if diversity > 0:
        kept, basis = _portfolio(ranked, k, threshold, signatures, diversity, embed)
    else:
        kept = _walk(ranked, k, threshold, signatures)
    dups: set[int] = set()
    for i, r in enumerate(ranked):
        if not fill or len(kept) >= k:
            break
        if i not in kept:
            kept.append(i)
            dups.add(r.id)
    kept.sort()
    return Curated([ranked[i] for i in kept], frozenset(dups), basis)


PORTFOLIO_POOL = 8  # a portfolio of k is chosen among the best 8k: bounded work however long the run


def _walk(ranked: list[Render], k: int, threshold: float, signatures) -> list[int]:
    """Top k in rank order, near-duplicates skipped. Signatures are taken as the walk needs them:
    k distinct images cost about k decodes, however long the run."""
    kept: list[int] = []
    kept_vectors: list = []
    for i, r in enumerate(ranked):
        vector = _signature(r, signatures)
        if vector is None or all(cosine(vector, v) <= threshold for v in kept_vectors):
            kept.append(i)
            if vector is not None:
                kept_vectors.append(vector)
            if len(kept) == k:
                break
    return kept


def _portfolio(ranked: list[Render], k: int, threshold: float, signatures, diversity: float,
               embed: Optional[Embed] = None) -> tuple[list[int], str]:
    """The lead, then by marginal relevance among the best PORTFOLIO_POOL * k; near-duplicates
    of a kept image are never taken (the fill may add them back). The similarity is CLIP's where
    `embed` gives every pooled render an embedding; else the pixel signatures'. The near-duplicate
    threshold is the pixel signatures' either way (it is calibrated on them)."""
    pool = ranked[:PORTFOLIO_POOL * k]
    signs = [_signature(r, signatures) for r in pool]
    vectors, basis = signs, PIXEL
    if embed is not None:
        clip = embed(pool)
        if all(v is not None for v in clip):
            vectors, basis = clip, CLIP
    kept = [0]
    while len(kept) < min(k, len(pool)):
        best, best_gain = None, None
        for i, r in enumerate(pool):
            if i in kept:
                continue
            dup = [cosine(signs[i], signs[j]) for j in kept if signs[i] is not None and signs[j] is not None]
            if dup and max(dup) > threshold:
                continue
            sims = [cosine(vectors[i], vectors[j]) for j in kept if vectors[i] is not None and vectors[j] is not None]
            gain = r.scores.composite - diversity * (max(sims) if sims else 0.0)
            if best_gain is None or gain > best_gain:
                best, best_gain = i, gain
        if best is None:
            break
        kept.append(best)
    return kept, basis


def kept_diversity(store, run_id: str, config: Optional[Mapping[str, Any]]) -> float:
    """The MMR weight of a run's kept set: the run's own `--diversity`, else the home's
    [scoring] diversity, else scoring.portfolio.DEFAULT_DIVERSITY."""
    import json

    from reverie.scoring.scorer import scoring_settings

    try:
        asked = json.loads(store.get_run(run_id).get("request_json") or "{}").get("diversity")
    except (ValueError, AttributeError):
        asked = None
    return float(asked) if asked is not None else scoring_settings((config or {}).get("scoring")).diversity


def portfolio_line(store, run_id: str, k: int, config: Optional[Mapping[str, Any]] = None,
                   embed: Optional[Embed] = None) -> str:
    """The kept set's Vendi score beside plain top-k's, on the same run: what the portfolio buys.
    Both on CLIP image embeddings where `embed` gives them for every image, else both on pixel
    signatures; the line says which."""
    from reverie.scoring.portfolio import vendi

    diversity = kept_diversity(store, run_id, config)
    threshold = near_duplicate_threshold(config)
    kept = curate(store, run_id, k, threshold=threshold, diversity=diversity, embed=embed).renders
    top = curate(store, run_id, k, threshold=threshold, diversity=0.0).renders
    basis = PIXEL
    vectors = {}
    if embed is not None:
        both = list({r.id: r for r in kept + top}.values())
        clip = embed(both)
        if all(v is not None for v in clip):
            vectors, basis = {r.id: v for r, v in zip(both, clip)}, CLIP

    def score(renders) -> Optional[float]:
        found = [vectors.get(r.id) if vectors else _signature(r, {}) for r in renders]
        found = [v for v in found if v is not None]
        return vendi(found) if len(found) >= 2 else None

    mine, plain = score(kept), score(top)
    if mine is None or plain is None:
        return "portfolio: fewer than two images to compare"
    why = "" if basis == CLIP else "; CLIP is not here or did not score this run"
    return (f"portfolio of {len(kept)} (diversity {diversity:g}): Vendi {mine:.2f} against top-{len(top)}'s {plain:.2f} "
            f"(effective number of different images, on {basis}{why})")


def clip_embedder(store, run_id: str, config: Optional[Mapping[str, Any]] = None,
                  cache: Optional[Mapping[int, tuple]] = None, model: Any = None) -> Optional[Embed]:
    """CLIP image embeddings for a run's renders, when CLIP scored the run and its weights are
    here: from `cache` (what the scorer already computed, in memory) else from the files with
    `model` (a ClipModel; None: the [scoring] settings' own, loaded on first need). None when the
    run was scored without CLIP: the caller then measures on pixel signatures, and says so."""
    scored = store.renders(run_id)
    if not any(r.scores is not None and r.scores.scorer.startswith("clip") for r in scored):
        return None
    from reverie.scoring.scorer import clip_weights_cached, scoring_settings

    table = dict((config or {}).get("scoring") or {})
    table.pop("plugins", None)
    settings = scoring_settings(table)
    if model is None and not (settings.clip_weights or settings.clip_config or clip_weights_cached(settings)):
        return None
    known: dict[int, tuple] = {}
    held: list = [model]

    def embed(renders: list[Render]) -> list[Optional[tuple]]:
        from PIL import Image

        out: list[Optional[tuple]] = []
        for r in renders:
            vector = known.get(r.id) or (cache.get(r.id) if cache is not None else None)
            if vector is None:
                if held[0] is None:
                    from reverie.scoring.builtins import clip_model

                    held[0] = clip_model({**table, "device": settings.device})
                try:
                    with Image.open(r.path) as im:
                        vector = tuple(held[0].encode_images([im.convert("RGB")])[0].cpu().tolist())
                except (OSError, ValueError):
                    vector = None
            if vector is not None:
                known[r.id] = vector
            out.append(vector)
        return out

    return embed


def _signature(render: Render, known) -> Optional[tuple]:
    """A render's pixel signature; None for a file deleted by hand, which resembles nothing (it
    is still shown: its row, scores and lineage are all there)."""
    cached = known.get(render.id)
    if cached is not None:
        return cached
    try:
        return pixel_signature(render.path)
    except (OSError, ValueError, TypeError):
        return None


def cosine(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / norm if norm else 0.0


def best(store, run_id: str, k: int, *, threshold: float, signatures: Optional[dict[int, tuple]] = None,
         fill: bool = False, diversity: float = 0.0) -> list[Render]:
    """The renders of `curate`, without the near-duplicate marks."""
    return curate(store, run_id, k, threshold=threshold, signatures=signatures, fill=fill, diversity=diversity).renders


def home_best(store, run_id: str, k: int, *, fill: bool = False, embed: Optional[Embed] = None) -> list[Render]:
    """`best` for a caller that holds a store and no studio (`reverie show`, `export`): the
    threshold and diversity from the home's reverie.toml (and the run's own --diversity)."""
    from reverie.config import load_config

    config = load_config(store.home)
    return curate(store, run_id, k, threshold=near_duplicate_threshold(config), fill=fill,
                  diversity=kept_diversity(store, run_id, config), embed=embed).renders


def pixel_signature(path: str) -> tuple:
    from PIL import Image

    with Image.open(path) as im:
        return image_signature(im)


def image_signature(image) -> tuple:
    """The pixel signature of an image in memory: the same as pixel_signature of its PNG."""
    import numpy as np

    from reverie.scoring.heuristic import signature

    return signature(np.asarray(image.convert("RGB"), dtype=np.float32))


DIVERSITY_SAMPLE = 64  # renders whose PNGs are read to measure a run's diversity: bounded for long runs


def run_diversity(store, run_id: str) -> tuple[Optional[float], int]:
    """(the run's diversity, how many images measured): see measure_diversity."""
    measured = measure_diversity(store, run_id)
    return measured.value, measured.images


@dataclass(frozen=True)
class Diversity:
    value: Optional[float]  # None with fewer than two readable images
    images: int  # how many were measured
    damaged: list[tuple[int, str]]  # (render id, path) of files that are there but cannot be read as images


def measure_diversity(store, run_id: str) -> Diversity:
    """One minus the mean pairwise cosine of the pixel signatures of the run's images (0: all
    alike). Long runs are measured on DIVERSITY_SAMPLE images spread evenly over them; a file that
    is damaged (truncated, overwritten) is left out and named, never the end of the report."""
    from pathlib import Path

    from PIL import Image

    from reverie.orchestrator.policy import diversity
    from reverie.scoring.dedupe import mean_similarity

    renders = [r for r in store.renders(run_id) if r.path and Path(r.path).is_file()]
    if len(renders) > DIVERSITY_SAMPLE:
        step = len(renders) / DIVERSITY_SAMPLE
        renders = [renders[int(i * step)] for i in range(DIVERSITY_SAMPLE)]
    signatures, damaged = [], []
    for r in renders:
        try:
            signatures.append(pixel_signature(r.path))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):  # what PIL raises on a broken file
            damaged.append((r.id, r.path))
    if len(signatures) < 2:
        return Diversity(None, len(signatures), damaged)
    return Diversity(diversity(mean_similarity(signatures)), len(signatures), damaged)


def diversity_line(store, run_id: str) -> str:
    measured = measure_diversity(store, run_id)
    if measured.value is None:
        line = "diversity: fewer than two images"
    else:
        line = (f"diversity {measured.value:.2f} (1 - mean pixel-signature cosine over {measured.images} images; near 0 "
                f"means alike: the loop then turns shift, blind steps and embedding noise)")
    for render_id, path in measured.damaged:
        line += (f"\ndamaged: render {render_id}'s file {path} cannot be read as an image (left out of "
                 f"the figure); `reverie lineage {render_id}` has its recipe to render it again")
    return line
