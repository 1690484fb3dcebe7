"""Orchestrator overhead: wall time of Studio.make minus the time spent inside engine.render,
as a fraction of engine time (goal: under 2% at N=32).

Measured side by side in one run: the tiny engine (real diffusers code on CPU, 256x256) and the
fixed engine (a known time per image) at latencies that stand for real engines: 0.05 s, 0.25 s
and 1.0 s per 1024x1024 image (Z-Image Turbo takes about 1 s on an H100). The overhead covers
expansion, the LangGraph loop and its checkpoints, and whatever part of PNG encoding, the
content-addressed writes, the SQLite lineage and (heuristic) scoring is not hidden behind the
engine: the render node stores and scores each image while the engine renders the next.

    python bench/bench_overhead.py [--n 32] [--rounds 1] [--latencies 0.05,0.25,1.0]
        [--fixed-megapixels 1.0] [--megapixels 0.0625] [--steps 9] [--no-tiny]

The defaults take about a minute and a half; more rounds or latencies take longer.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from pathlib import Path

from reverie.orchestrator.studio import Studio
from reverie.profiles import get_profile

GOAL = 0.02


def timed_engine(studio: Studio, box: dict):
    """Wrap the studio's engine so the time inside render() adds up in box['engine']."""
    engine = studio.engine_for(get_profile(studio.profile_name), lambda e: None)
    render = engine.render

    @functools.wraps(render)
    def timed(specs, progress=None, on_output=None):
        t0 = time.perf_counter()
        try:
            return render(specs, progress, on_output)
        finally:
            box["engine"] += time.perf_counter() - t0

    engine.render = timed
    return engine


def overhead(engine_name: str, home: Path, n: int, rounds: int, megapixels: float, steps, options: dict) -> dict:
    box = {"engine": 0.0}
    with Studio(home=home, engine=engine_name, scorer="heuristic", engine_options=options) as studio:
        timed_engine(studio, box)
        studio.make("warm up", n=1, rounds=1, megapixels=megapixels, seed=1, steps=steps)  # loads the model, fills caches
        box["engine"] = 0.0
        t0 = time.perf_counter()
        result = studio.make("a fox in the rain", n=n, rounds=rounds, megapixels=megapixels, seed=2, steps=steps)
        wall = time.perf_counter() - t0
    first = result.renders[0] if result.renders else None
    return {"engine": engine_name, "renders": len(result.renders), "wall": wall, "inside_engine": box["engine"],
            "size": f"{first.spec.width}x{first.spec.height}" if first else "-",
            "overhead_fraction": (wall - box["engine"]) / box["engine"]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--latencies", default="0.05,0.25,1.0", help="seconds per image for the fixed engine, comma-separated")
    ap.add_argument("--fixed-megapixels", type=float, default=1.0, help="image size for the fixed engine (1.0 = 1024x1024)")
    ap.add_argument("--megapixels", type=float, default=0.0625, help="image size for the tiny engine (0.0625 = 256x256, its cap)")
    ap.add_argument("--steps", type=int, default=None, help="tiny engine sampling steps (default: the profile's 9)")
    ap.add_argument("--no-tiny", action="store_true", help="skip the tiny engine")
    ap.add_argument("--home", default=None, help="a reverie home (default: a temp folder)")
    args = ap.parse_args(argv)
    home = Path(args.home or tempfile.mkdtemp(prefix="reverie-bench-"))
    results = {}
    if not args.no_tiny:
        results["tiny"] = overhead("tiny", home, args.n, args.rounds, args.megapixels, args.steps, {"batch_size": 4})
    for latency in (float(x) for x in args.latencies.split(",") if x.strip()):
        results[f"fixed {latency:g}s"] = overhead("fixed", home, args.n, args.rounds, args.fixed_megapixels, None,
                                                  {"latency": latency})
    print(f"orchestrator overhead = (make wall - engine time) / engine time, N={args.n} per round, "
          f"{args.rounds} round(s), heuristic scorer (goal < {100 * GOAL:g}%)")
    for name, r in results.items():
        verdict = "meets the goal" if r["overhead_fraction"] < GOAL else "misses the goal"
        print(f"  {name:12s} {r['size']:>9s}: {r['renders']} renders, wall {r['wall']:6.2f}s, "
              f"in engine {r['inside_engine']:6.2f}s, overhead {100 * r['overhead_fraction']:5.1f}%  {verdict}")
    return results


if __name__ == "__main__":
    main()
