"""Curation with known truth: does reverie's ensemble keep images closer to the best than
best-of-N on one verifier, at the same number of renders?

    python bench/bench_curation.py                      # 400 trials of 32 renders, keep 4
    python bench/bench_curation.py --trials 50 --n 16   # quicker
    python bench/bench_curation.py --only knobs         # the variety knobs' Vendi on the tiny engine

A fixed engine draws each seed's picture with its true quality written into its pixels. The
verifiers read that quality back and add noise at known correlations; "aesthetic" is gameable:
part of it rewards a per-seed artefact that has nothing to do with quality, with a heavy tail,
the way a verifier pushed by search rewards what it over-values. Each verifier reports on its
real scale (through the inverse of its reference quantiles), so the ensemble is reverie's own
`composite()` with its default weights, normalisation and caps, unchanged.

Printed: the mean true quality (0..1) of the kept top K for the oracle (keep by truth), best-of-N
on each single verifier, and the ensemble; and how many renders best-of-N on the gameable verifier
(and on the best honest one) needs to reach the ensemble's quality. Then reverie's loop with the
early-stop rule (policy.stop_reason over rounds of N/4): its kept quality, the renders it spent,
and best-of-N on one verifier at that many renders.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

SIDE = 16


def true_quality(seed: int) -> float:
    """The seed's true quality in 0..1, fixed by the seed alone."""
    return float(np.random.default_rng([seed, 2025]).random())


class TruthEngine:
    """Renders a seed as a small picture whose top-left pixel's red and green channels carry its
    true quality (16 bits), the rest seeded noise; images are what the verifiers are given."""

    def render(self, seeds):
        out = []
        for seed in seeds:
            a = np.random.default_rng(seed).integers(0, 256, size=(SIDE, SIDE, 3), dtype=np.uint8)
            code = int(round(true_quality(seed) * 65535))
            a[0, 0, 0], a[0, 0, 1] = code >> 8, code & 0xFF
            out.append((seed, Image.fromarray(a)))
        return out


def read_quality(image: Image.Image) -> float:
    r, g = image.getpixel((0, 0))[:2]
    return ((r << 8) | g) / 65535


@dataclass(frozen=True)
class Verifier:
    """z = corr * truth_z + sqrt(1 - corr^2 - game^2) * noise + game * artefact (all unit-variance)."""

    name: str
    corr: float
    game: float = 0.0

    def raw(self, image: Image.Image, seed: int) -> float:
        from reverie.scoring.composite import PERCENTS, REFERENCES

        truth_z = _probit(read_quality(image))
        rng = np.random.default_rng([seed, sum(map(ord, self.name))])
        noise = rng.standard_normal()
        # A heavy-tailed artefact (a standardised lognormal): rare seeds the verifier over-values a lot.
        artefact = (math.exp(rng.standard_normal()) - math.exp(0.5)) / math.sqrt((math.e - 1) * math.e)
        z = self.corr * truth_z + math.sqrt(max(0.0, 1 - self.corr ** 2 - self.game ** 2)) * noise + self.game * artefact
        # Onto the verifier's own scale: a percentile under N(0, 1), through its reference quantiles.
        return float(np.interp(_phi(z), PERCENTS, REFERENCES[self.name]))


VERIFIERS = (
    Verifier("faithfulness", corr=0.55),
    Verifier("prompt_match", corr=0.45),
    Verifier("aesthetic", corr=0.35, game=0.75),
    Verifier("pickscore", corr=0.5),
    Verifier("hps", corr=0.5),
)


def _phi(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def _probit(p: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(min(max(p, 1e-6), 1 - 1e-6))


def trial(engine: TruthEngine, seeds: list[int], k: int) -> dict[str, float]:
    from reverie.scoring.composite import DEFAULT_WEIGHTS, composite, normalise

    rendered = engine.render(seeds)
    truth = np.array([read_quality(im) for _, im in rendered])
    raws = [{v.name: v.raw(im, seed) for v in VERIFIERS} for seed, im in rendered]

    def kept(keys) -> float:
        return float(truth[np.argsort(-np.asarray(keys), kind="stable")[:k]].mean())

    out = {"oracle": kept(truth)}
    for v in VERIFIERS:
        out[f"best-of-N on {v.name}"] = kept([r[v.name] for r in raws])
    out["reverie ensemble"] = kept([composite(r, DEFAULT_WEIGHTS)[0] for r in raws])
    # The same percentiles and weights without the cap or the weakest-verifier share: what they add.
    out["plain weighted mean"] = kept([sum(normalise(n, x) * DEFAULT_WEIGHTS[n] for n, x in r.items()) for r in raws])
    # A user who turns the gameable verifier up: the cap and the weakest-verifier share hold it.
    heavy = {**DEFAULT_WEIGHTS, "aesthetic": 2.0}
    total = sum(heavy.values())
    out["reverie ensemble, aesthetic x7"] = kept([composite(r, heavy)[0] for r in raws])
    out["plain mean, aesthetic x7"] = kept([sum(normalise(n, x) * heavy[n] / total for n, x in r.items()) for r in raws])
    out["random"] = float(truth[:k].mean())
    # reverie's loop: rounds of ROUND renders scored by the ensemble, stopped by policy.stop_reason
    # (target none, the render budget, and the early-stop rule on the run's own composites).
    quality, spent = early_stop_loop([composite(r, DEFAULT_WEIGHTS)[0] for r in raws], truth, k)
    out["reverie loop, early stop"] = quality
    out[SPENT] = spent
    return out


SPENT = "renders spent by the early-stopping loop"
ROUNDS = 4  # the loop renders its budget in this many rounds


def early_stop_loop(ensemble: list[float], truth: np.ndarray, k: int) -> tuple[float, int]:
    """(true quality of the kept top k, renders spent) for reverie's loop over the same seeds in
    order, `len(ensemble) / ROUNDS` per round, stopping where the judge would."""
    from reverie.orchestrator.policy import Budget, stop_reason

    n = len(ensemble)
    per_round = max(1, n // ROUNDS)
    budget = Budget(rounds=ROUNDS, max_renders=n)
    spent = 0
    for rnd in range(ROUNDS):
        spent = min(n, spent + per_round)
        seen = ensemble[:spent]
        if stop_reason(budget, finished_round=rnd, history=[max(seen)], elapsed=0.0, renders=spent, scores=seen,
                       next_renders=min(per_round, n - spent)):
            break
    order = np.argsort(-np.asarray(ensemble[:spent]), kind="stable")[:k]
    return float(truth[:spent][order].mean()), spent


def run(trials: int = 400, n: int = 32, k: int = 4, seed: int = 0) -> dict[str, float]:
    engine = TruthEngine()
    totals: dict[str, float] = {}
    for t in range(trials):
        seeds = [seed * 1_000_003 + t * n + i for i in range(n)]
        for name, value in trial(engine, seeds, k).items():
            totals[name] = totals.get(name, 0.0) + value / trials
    return totals


def renders_to_match(quality: float, verifier: str, n_max: int, trials: int, k: int, seed: int) -> int | None:
    """The fewest renders best-of-N on one verifier needs for a kept set as good as `quality`."""
    n = k
    while n <= n_max:
        if run(trials, n, k, seed)[f"best-of-N on {verifier}"] >= quality:
            return n
        n = int(n * 1.5) + 1
    return None


# -- a portfolio: true modes as well as true quality --------------------------------------------
MODES = 6
MMR_WEIGHTS = (0.1, 0.2, 0.3, 0.5, 1.0)


def portfolio_trial(rng: np.random.Generator, n: int, k: int) -> dict[str, tuple[float, float]]:
    """{method: (mean true quality of the kept k, true modes among them)} for one idea's n renders.

    Each render has a true mode (one composition of the idea) and a true quality. Like a distilled
    model, most seeds fall in one mode (probabilities halve from mode to mode), which is also a
    little better on average. Embeddings share the idea's direction, then the mode's, then the
    render's own; the composite is the true quality plus a verifier's error."""
    from reverie.scoring.portfolio import mmr

    dims = 32
    common = rng.standard_normal(dims)
    centres = rng.standard_normal((MODES, dims))
    probs = 0.5 ** np.arange(MODES)
    mode = rng.choice(MODES, size=n, p=probs / probs.sum())
    quality = np.clip(rng.random(n) * 0.8 + 0.1 + 0.05 * (mode == 0), 0, 1)
    emb = common + 0.8 * centres[mode] + 0.35 * rng.standard_normal((n, dims))
    composite = quality + 0.08 * rng.standard_normal(n)

    def summary(idx) -> tuple[float, float]:
        idx = list(idx)
        return float(quality[idx].mean()), float(len(set(mode[idx].tolist())))

    out = {"oracle (top-K by truth)": summary(np.argsort(-quality, kind="stable")[:k]),
           "top-K by composite": summary(mmr(composite.tolist(), emb.tolist(), k, diversity=0.0))}
    for w in MMR_WEIGHTS:
        out[f"portfolio, diversity {w}"] = summary(mmr(composite.tolist(), emb.tolist(), k, diversity=w))
    return out


def run_portfolio(trials: int, n: int, k: int, seed: int) -> dict[str, tuple[float, float]]:
    rng = np.random.default_rng([seed, 25])
    totals: dict[str, list[float]] = {}
    for _ in range(trials):
        for name, (q, m) in portfolio_trial(rng, n, k).items():
            t = totals.setdefault(name, [0.0, 0.0])
            t[0] += q / trials
            t[1] += m / trials
    return {name: (q, m) for name, (q, m) in totals.items()}


# -- search in noise space against seed re-rolling, at equal renders ----------------------------
NOISE_DIMS = 8


def noise_trial(rng: np.random.Generator, rounds: int, per_round: int, k: int) -> dict[str, tuple[float, float]]:
    """{method: (true quality of the best render, mean true quality of the kept k)} on an engine
    whose quality is a smooth function of the noise's low-frequency components."""
    from reverie.orchestrator.noise_search import NoiseDist, draw, refit

    target = 0.8 * rng.standard_normal(NOISE_DIMS)

    def truth(z) -> float:
        return float(np.exp(-np.sum((np.asarray(z) - target) ** 2) / (2 * NOISE_DIMS)))

    base = int(rng.integers(1 << 30))
    results = {}
    for method in ("seed re-rolling", "noise-space search"):
        dist = NoiseDist.prior(NOISE_DIMS)
        comps, scores, truths = [], [], []
        for r in range(rounds):
            seeds = [base + r * per_round + i for i in range(per_round)]
            drawn = draw(dist, seeds)
            for z in drawn:
                t = truth(z)
                comps.append(z)
                truths.append(t)
                scores.append(t + 0.05 * float(rng.standard_normal()))  # the verifier's error
            if method == "noise-space search":
                dist = refit(dist, comps, scores)
        order = np.argsort(-np.asarray(scores), kind="stable")
        results[method] = (truths[int(order[0])], float(np.mean([truths[int(i)] for i in order[:k]])))
    return results


def run_noise(trials: int, rounds: int, per_round: int, k: int, seed: int) -> dict[str, tuple[float, float]]:
    rng = np.random.default_rng([seed, 2602])
    totals: dict[str, list[float]] = {}
    for _ in range(trials):
        for name, (best, kept) in noise_trial(rng, rounds, per_round, k).items():
            t = totals.setdefault(name, [0.0, 0.0])
            t[0] += best / trials
            t[1] += kept / trials
    return {name: (b, q) for name, (b, q) in totals.items()}


def print_portfolio(trials: int, n: int, k: int, seed: int) -> dict[str, float]:
    result = run_portfolio(trials, n, k, seed)
    top_q, top_m = result["top-K by composite"]
    print(f"\nportfolio: {trials} ideas, {n} renders each over {MODES} true modes (one dominant), keep {k}")
    print(f"  {'method':32s} {'true quality':>12s} {'true modes':>10s}  quality vs top-K")
    for name, (q, m) in result.items():
        print(f"  {name:32s} {q:12.3f} {m:10.2f}  {q / top_q - 1:+.1%}")
    out = {f"portfolio quality: {name}": q for name, (q, _) in result.items()}
    out.update({f"portfolio modes: {name}": m for name, (_, m) in result.items()})
    return out


def print_noise(trials: int, rounds: int, per_round: int, k: int, seed: int) -> dict[str, float]:
    result = run_noise(trials, rounds, per_round, k, seed)
    print(f"\nnoise-space search: {trials} ideas, {rounds} rounds of {per_round} renders (equal renders), "
          f"quality a smooth function of {NOISE_DIMS} low-frequency components")
    for name, (best, kept) in result.items():
        print(f"  {name:32s} best render {best:.3f}   kept {k}: {kept:.3f}")
    out = {f"noise best: {name}": b for name, (b, _) in result.items()}
    out.update({f"noise kept: {name}": q for name, (_, q) in result.items()})
    return out


KNOB_SETTINGS = {  # the variety knobs at the values the loop turns them to (policy.turn_knobs and friends)
    "no knobs": {},
    "shift 7": {"shift": 7.0},
    "blind steps 1": {"blind_steps": 1},
    "embedding noise 0.2": {"embed_noise": 0.2},
    "handoff 1 step to the base": {"handoff_steps": 1},
}


def run_knobs(n: int = 16, seed: int = 0, side: int = 64) -> dict[str, float]:
    """The Vendi score of n renders of one prompt on the tiny engine (real diffusers Z-Image
    pipeline, random weights, a tiny base transformer for the handoff) with no knob, each knob,
    and all of them. On pixel signatures: the tiny model's pictures have no content for CLIP to see."""
    import tempfile

    from reverie.orchestrator.curation import image_signature
    from reverie.render.tiny import TinyEngine
    from reverie.scoring.portfolio import vendi
    from reverie.types import RenderSpec

    settings = dict(KNOB_SETTINGS)
    settings["all knobs"] = {k: v for knob in KNOB_SETTINGS.values() for k, v in knob.items()}
    with tempfile.TemporaryDirectory() as models:
        engine = TinyEngine(models_dir=models, batch_size=4)
        try:
            base = RenderSpec(prompt="a red fox in the rain, cinematic", seed=0, width=side, height=side,
                              steps=engine.profile.steps, guidance=engine.profile.guidance, profile=engine.profile.name)
            out = {}
            for name, knobs in settings.items():
                specs = [base.with_(seed=seed + i, **knobs) for i in range(n)]
                out[name] = vendi([image_signature(o.image) for o in engine.render(specs)])
        finally:
            engine.close()
    return out


def print_knobs(n: int, seed: int) -> dict[str, float]:
    result = run_knobs(n, seed)
    print(f"\nvariety knobs on the tiny engine: Vendi score of {n} renders of one prompt "
          f"(effective number of different images, on pixel signatures)")
    plain = result["no knobs"]
    for name, value in result.items():
        print(f"  {name:32s} {value:6.2f}  {value / plain - 1:+.0%} vs no knobs")
    return {f"knobs vendi: {name}": v for name, v in result.items()}


def main(argv=None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--n", type=int, default=32, help="renders per run (the same for every method)")
    parser.add_argument("--keep", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--match-up-to", type=int, default=256,
                        help="largest N tried for best-of-N on the gameable verifier to match the ensemble")
    parser.add_argument("--only", choices=("ensemble", "portfolio", "noise", "knobs"), default=None,
                        help="run one part (default: the three truth-engine parts; knobs renders on the tiny engine, minutes on a CPU)")
    args = parser.parse_args(argv)
    if args.only == "knobs":
        return print_knobs(min(args.n, 16), args.seed)
    if args.only in ("portfolio", "noise"):
        if args.only == "portfolio":
            return print_portfolio(args.trials, args.n, args.keep, args.seed)
        return print_noise(args.trials, 4, max(2, args.n // 4), args.keep, args.seed)
    result = run(args.trials, args.n, args.keep, args.seed)
    print(f"{args.trials} trials, {args.n} renders each, keep {args.keep}; mean true quality (0..1) of the kept set")
    print("verifiers: " + ", ".join(f"{v.name} corr {v.corr}" + (f" gameable {v.game}" if v.game else "") for v in VERIFIERS))
    for name, value in sorted(result.items(), key=lambda kv: -kv[1]):
        if name != SPENT:
            print(f"  {name:32s} {value:.3f}   ({value / result['oracle']:.1%} of oracle)")
    spent = result[SPENT]
    print(f"renders: the early-stopping loop spent {spent:.1f} of {args.n} on average ({spent / args.n:.0%}); "
          f"the loop keeps {result['reverie loop, early stop'] / result['reverie ensemble']:.1%} of the full-budget "
          f"ensemble's quality")
    at_spent = run(max(20, args.trials // 4), max(args.keep, round(spent)), args.keep, args.seed + 2)
    result["best-of-N on faithfulness at the loop's renders"] = at_spent["best-of-N on faithfulness"]
    print(f"  at {round(spent)} renders, best-of-N on faithfulness keeps {at_spent['best-of-N on faithfulness']:.3f}, "
          f"on aesthetic {at_spent['best-of-N on aesthetic']:.3f}; the loop {result['reverie loop, early stop']:.3f}")
    for verifier in ("aesthetic", "faithfulness"):
        needed = renders_to_match(result["reverie ensemble"], verifier, args.match_up_to, max(20, args.trials // 4),
                                  args.keep, args.seed + 1)
        result[f"renders {verifier} needs"] = float(needed) if needed else float("nan")
        print(f"renders: ensemble {args.n}; best-of-N on {verifier} needs "
              + (f"{needed} for the same quality" if needed else f"more than {args.match_up_to} for the same quality"))
    if args.only is None:
        result.update(print_portfolio(args.trials, args.n, args.keep, args.seed))
        result.update(print_noise(args.trials, 4, max(2, args.n // 4), args.keep, args.seed))
    return result


if __name__ == "__main__":
    main()
