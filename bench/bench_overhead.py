"""Orchestrator overhead: wall time of Studio.make minus the time spent inside engine.render,
as a fraction of engine time (goal: under 2% at N=32).

Measured side by side in one run with the tiny engine (real diffusers code) and with the fixed
engine (a known sleep per image). The overhead covers expansion, the LangGraph loop, scoring
(the heuristic scorer), PNG encoding, content-addressed writes and the SQLite lineage.

    python bench/bench_overhead.py [--n 32] [--rounds 1] [--latency 0.05] [--megapixels 0.0625] [--steps 9]
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from pathlib import Path

from reverie.orchestrator.studio import Studio
from reverie.render.profiles import get_profile


def timed_engine(studio: Studio, box: dict):
    """Wrap the studio's engine so the time inside render() adds up in box['engine']."""
    engine = studio.engine_for(get_profile(studio.profile_name), lambda e: None)
    render = engine.render

    @functools.wraps(render)
    def timed(specs, progress=None):
        t0 = time.perf_counter()
        try:
            return render(specs, progress)
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
    return {"engine": engine_name, "renders": len(result.renders), "wall": wall, "inside_engine": box["engine"],
            "overhead_fraction": (wall - box["engine"]) / box["engine"]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--latency", type=float, default=0.05, help="seconds per image for the fixed engine")
    ap.add_argument("--megapixels", type=float, default=0.0625, help="0.0625 = 256x256, the tiny engine's cap")
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default: the profile's 9)")
    ap.add_argument("--home", default=None, help="a reverie home (default: a temp folder)")
    args = ap.parse_args(argv)
    home = Path(args.home or tempfile.mkdtemp(prefix="reverie-bench-"))
    results = {
        "tiny": overhead("tiny", home, args.n, args.rounds, args.megapixels, args.steps, {"batch_size": 4}),
        "fixed": overhead("fixed", home, args.n, args.rounds, args.megapixels, args.steps, {"latency": args.latency}),
    }
    print(f"orchestrator overhead = (make wall - engine time) / engine time, N={args.n} per round, "
          f"{args.rounds} round(s) (goal < 2%)")
    for name, r in results.items():
        print(f"  {name:5s}: {r['renders']} renders, wall {r['wall']:.2f}s, in engine {r['inside_engine']:.2f}s, "
              f"overhead {100 * r['overhead_fraction']:.1f}%")
    return results


if __name__ == "__main__":
    main()
