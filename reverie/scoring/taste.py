"""Taste: a composite weighting learnt from one person's picks and rejects.

Every pick is taken to beat every reject (a pairwise Bradley-Terry model with no intercept):
P(pick beats reject) = sigmoid(w . (f(pick) - f(reject))), where f is the feature each score
family's composite is linear in:

- "heuristic": the log of each component (floored as the heuristic floors it), because its
  composite is the weighted geometric mean, which ranks exactly as w . log(values);
- "clip": each component's percentile against its reference (composite.normalise), which the
  composite's weighted mean is linear in.

The weights are kept non-negative (composite weights are shares) and L2-regularised, and the
fit is judged by k-fold cross-validation: on pick/reject pairs it never saw, how often does the
learnt composite order them as the person did, against the default composite. Scores are
computed with the family's own composite, so the agreement is what a run would see.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np

from reverie.scoring import composite as comp
from reverie.scoring import heuristic
from reverie.types import ReverieError

FAMILIES = ("heuristic", "clip")
MIN_PICKS = 3
MIN_REJECTS = 3
FOLDS = 5
L2 = 0.01  # on standardised features: enough to keep a weight at 0 that the choices do not ask for
STEPS = 400


@dataclass(frozen=True)
class Taste:
    """A stored weighting: the scorer of its family uses `weights` instead of the default."""

    id: int
    family: str
    weights: dict[str, float]

    @property
    def label(self) -> str:
        return f"taste {self.id}"


@dataclass(frozen=True)
class Fit:
    family: str
    weights: dict[str, float]  # shares summing to 1
    default_weights: dict[str, float]  # the default's shares over the same components
    picks: int
    rejects: int
    agreement: float  # held-out pairs the learnt composite orders as the person did (0..1)
    default_agreement: float  # the same pairs, ordered by the default composite
    folds: int
    ignored: int = 0  # choices on renders of another scorer family, or without scores
    details: dict = field(default_factory=dict)

    @property
    def better(self) -> bool:
        return self.agreement >= self.default_agreement

    def to_dict(self) -> dict:
        return {"family": self.family, "weights": self.weights, "default_weights": self.default_weights,
                "picks": self.picks, "rejects": self.rejects, "agreement": self.agreement,
                "default_agreement": self.default_agreement, "folds": self.folds, "ignored": self.ignored}


def family_of(values: Mapping[str, float]) -> str:
    return "heuristic" if set(heuristic.WEIGHTS) & set(values) else "clip"


def default_weights(family: str) -> dict[str, float]:
    from reverie.scoring.plugins import default_weights as registered

    # One registry holds the built-in components and the installed plugins that select.
    return registered("heuristic" if family == "heuristic" else "clip")


def components_of(family: str, rows: Sequence[Mapping[str, float]]) -> list[str]:
    """The family's components every row has, in the default weighting's order."""
    return [c for c in default_weights(family) if rows and all(c in r for r in rows)]


def features(family: str, values: Mapping[str, float], components: Sequence[str]) -> np.ndarray:
    if family == "heuristic":
        return np.array([math.log(max(heuristic.FLOOR, quality(c, values))) for c in components])
    return np.array([comp.normalise(c, float(values[c])) for c in components])


def quality(name: str, values: Mapping[str, float]) -> float:
    """A heuristic component as it is (a 0..1 quality); a plugin's as its percentile."""
    return float(values[name]) if name in heuristic.WEIGHTS else comp.normalise(name, float(values[name]))


def score_with(family: str, values: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """The family's own composite of `values` under `weights` (what a run would store)."""
    if family == "heuristic":
        return heuristic.combine({k: quality(k, values) for k in values if k in weights}, dict(weights))
    return comp.composite(values, weights)[0]


def shares(weights: Mapping[str, float]) -> dict[str, float]:
    total = sum(max(0.0, w) for w in weights.values())
    return {k: (max(0.0, w) / total if total > 0 else 0.0) for k, w in weights.items()}


def fit_pairs(diffs: np.ndarray, l2: float = L2, steps: int = STEPS) -> np.ndarray:
    """Non-negative weights maximising the Bradley-Terry likelihood that each row of `diffs`
    (winner's features minus loser's) is won, by projected gradient descent on standardised
    features; returned on the features' own scale."""
    if diffs.size == 0:
        raise ValueError("no pairs to fit")
    scale = diffs.std(axis=0)
    scale[scale < 1e-9] = 1.0
    z = diffs / scale
    w = np.full(z.shape[1], 0.1)
    lr = 1.0
    for _ in range(steps):
        margin = np.clip(z @ w, -30, 30)
        grad = -(z * (1.0 / (1.0 + np.exp(margin)))[:, None]).mean(axis=0) + 2 * l2 * w
        w = np.maximum(0.0, w - lr * grad)
    return w / scale


def _pairs(picks: list[np.ndarray], rejects: list[np.ndarray]) -> np.ndarray:
    if not picks or not rejects:
        return np.zeros((0, 0))
    p, r = np.stack(picks), np.stack(rejects)
    return (p[:, None, :] - r[None, :, :]).reshape(-1, p.shape[1])


def _agreement(family: str, picked: list[dict], rejected: list[dict], weights: Mapping[str, float]) -> tuple[float, int]:
    """(share of pick/reject pairs the composite orders as the person did, ties half; pairs)."""
    if not picked or not rejected:
        return 0.0, 0
    ps = np.array([score_with(family, v, weights) for v in picked])
    rs = np.array([score_with(family, v, weights) for v in rejected])
    d = ps[:, None] - rs[None, :]
    return float(((d > 0) + 0.5 * (d == 0)).mean()), int(d.size)


def learn(labelled: Sequence[Mapping], family: Optional[str] = None, folds: int = FOLDS, seed: int = 0) -> Fit:
    """Learn a weighting from `store.picks.labelled()` rows (choice + scores by name).

    The family is that of the newest choice unless given; choices on renders of another family
    are left out (and counted in `ignored`)."""
    rows = [r for r in labelled if r.get("scores")]
    if not rows:
        raise ReverieError("no picks or rejects yet: mark images with `reverie pick IMAGE` and `reverie reject IMAGE` "
                           f"(at least {MIN_PICKS} of each), then run `reverie taste`")
    family = family or family_of(rows[-1]["scores"])
    mine = [r for r in rows if family_of(r["scores"]) == family]
    values = [{k: v for k, v in r["scores"].items() if k != "composite" and not k.startswith(comp.HELD_OUT_PREFIX)}
              for r in mine]
    components = components_of(family, values)
    picked = [v for v, r in zip(values, mine) if r["choice"] == "pick"]
    rejected = [v for v, r in zip(values, mine) if r["choice"] == "reject"]
    if len(picked) < MIN_PICKS or len(rejected) < MIN_REJECTS or len(components) < 2:
        raise ReverieError(f"{len(picked)} picks and {len(rejected)} rejects on {family}-scored images: taste needs at "
                           f"least {MIN_PICKS} of each; mark more with `reverie pick IMAGE` / `reverie reject IMAGE`")
    default = shares({c: default_weights(family)[c] for c in components})
    feats = {id(v): features(family, v, components) for v in picked + rejected}

    # k-fold over images (not pairs), so no held-out image was seen in training.
    rng = np.random.default_rng(seed)
    folds = max(2, min(folds, len(picked), len(rejected)))
    pick_fold = rng.permutation(len(picked)) % folds
    reject_fold = rng.permutation(len(rejected)) % folds
    agree = base = 0.0
    pairs = 0
    for k in range(folds):
        train_p = [feats[id(v)] for v, f in zip(picked, pick_fold) if f != k]
        train_r = [feats[id(v)] for v, f in zip(rejected, reject_fold) if f != k]
        test_p = [v for v, f in zip(picked, pick_fold) if f == k]
        test_r = [v for v, f in zip(rejected, reject_fold) if f == k]
        w = fit_pairs(_pairs(train_p, train_r))
        learnt = shares(dict(zip(components, w))) if w.sum() > 0 else default
        a, n = _agreement(family, test_p, test_r, learnt)
        b, _ = _agreement(family, test_p, test_r, default)
        agree, base, pairs = agree + a * n, base + b * n, pairs + n
    w = fit_pairs(_pairs([feats[id(v)] for v in picked], [feats[id(v)] for v in rejected]))
    learnt = shares(dict(zip(components, w))) if w.sum() > 0 else default
    return Fit(family=family, weights={k: round(v, 4) for k, v in learnt.items()},
               default_weights={k: round(v, 4) for k, v in default.items()}, picks=len(picked), rejects=len(rejected),
               agreement=round(agree / pairs, 4), default_agreement=round(base / pairs, 4), folds=folds,
               ignored=len(labelled) - len(mine), details={"held_out_pairs": pairs})


def tastes_from(active: Mapping[str, Mapping]) -> dict[str, Taste]:
    """`store.tastes.active()` rows as Tastes, family -> weighting."""
    return {family: Taste(id=int(row["id"]), family=family, weights=dict(row["weights"])) for family, row in active.items()}
