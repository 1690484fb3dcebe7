"""Store time per round over a long run (goal: round 100 within 1.5x of round 1).

One idea as a batch (`policy explore`, as `reverie batch --hours` runs it: no early stop) of 100
rounds of 4 seeds on the fixed engine (no latency, small images) and the heuristic scorer. Every
call into the lineage store (its tables included) is timed; a round's store time is what the
calls took from that round's prompt being stored to the next one's. A store whose per-round
work grows with the run (rescanning every render and score each round) shows it here as a ratio
well above 1; one that does a round's work by id stays flat.

Single rounds are noisy at these sizes (a millisecond or two), so the figures compared are the
medians of rounds 1-5 and 96-100; the raw rounds 1 and 100 are printed beside them.

    python bench/bench_rounds.py [--rounds 100] [--n 4] [--megapixels 0.0156] [--home DIR] [--by-method]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import threading
import time
from pathlib import Path

from reverie.orchestrator.studio import Studio

GOAL = 1.5
WINDOW = 5


class StoreClock:
    """Times every outermost call into a store object (nested calls count once), per thread."""

    def __init__(self):
        self.calls: list[tuple[float, float, str]] = []  # (start, seconds, method)
        self._depth = threading.local()
        self._lock = threading.Lock()

    def wrap(self, obj) -> None:
        for name in dir(type(obj)):
            if name.startswith("_"):
                continue
            attr = getattr(type(obj), name, None)
            if not callable(attr) or isinstance(attr, (staticmethod, classmethod, type)):
                continue
            setattr(obj, name, self._timed(getattr(obj, name), name))

    def _timed(self, method, name: str):
        @functools.wraps(method)
        def timed(*args, **kwargs):
            depth = getattr(self._depth, "n", 0)
            self._depth.n = depth + 1
            t0 = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self._depth.n = depth
                if depth == 0:
                    with self._lock:
                        self.calls.append((t0, time.perf_counter() - t0, name))

        return timed

    def per_round(self) -> list[dict[str, float]]:
        """Store seconds per round and method: from one add_prompt (a round's first write) to the next."""
        calls = sorted(self.calls)
        starts = [t for t, _, name in calls if name == "add_prompt"]
        end = next((t for t, _, name in calls if name == "finish_run" and t > starts[-1]), float("inf"))
        bounds = starts + [end]
        rounds: list[dict[str, float]] = [{} for _ in starts]
        i = 0
        for t, seconds, name in calls:
            while i < len(starts) and t >= bounds[i + 1]:
                i += 1
            if i < len(starts) and t >= bounds[i]:
                rounds[i][name] = rounds[i].get(name, 0.0) + seconds
        return rounds


def run(home: Path, rounds: int, n: int, megapixels: float) -> dict:
    ideas = home / "ideas.txt"
    ideas.write_text("a fox in the rain\n")
    clock = StoreClock()
    with Studio(home=home, engine="fixed", scorer="heuristic", engine_options={"latency": 0.0}) as studio:
        store = studio.store
        for table in (store.batches, store.chats, store.picks, store.tastes):
            clock.wrap(table)
        clock.wrap(store)
        t0 = time.perf_counter()
        studio.batch(ideas, per_prompt=rounds * n, n=n, rounds=rounds, keep=4, megapixels=megapixels)
        wall = time.perf_counter() - t0
    methods = clock.per_round()
    per_round = [sum(r.values()) for r in methods]
    first = statistics.median(per_round[:WINDOW])
    last = statistics.median(per_round[-WINDOW:])
    return {"rounds": len(per_round), "wall": wall, "per_round": per_round, "methods": methods, "first": first, "last": last,
            "ratio": last / first if first else float("inf")}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--n", type=int, default=4, help="seeds per round")
    ap.add_argument("--megapixels", type=float, default=0.0156, help="image size (0.0156 = 128x128)")
    ap.add_argument("--home", default=None, help="a reverie home (default: a temp folder)")
    ap.add_argument("--by-method", action="store_true", help="also print where the store time goes")
    args = ap.parse_args(argv)
    home = Path(args.home or tempfile.mkdtemp(prefix="reverie-bench-rounds-"))
    home.mkdir(parents=True, exist_ok=True)
    result = run(home, args.rounds, args.n, args.megapixels)
    rounds = result["per_round"]
    print(f"{result['rounds']} rounds of {args.n} on the fixed engine, {result['wall']:.1f} s wall")
    print("| round | store ms |")
    print("|---|---|")
    for i in sorted({0, 1, 9, len(rounds) // 2 - 1, len(rounds) - 1}):
        if 0 <= i < len(rounds):
            print(f"| {i + 1} | {rounds[i] * 1000:.2f} |")
    print(f"\nstore ms per round, median of rounds 1-{WINDOW}: {result['first'] * 1000:.2f}; "
          f"of rounds {len(rounds) - WINDOW + 1}-{len(rounds)}: {result['last'] * 1000:.2f}")
    if args.by_method:
        for label, window in ((f"rounds 1-{WINDOW}", result["methods"][:WINDOW]),
                              (f"the last {WINDOW} rounds", result["methods"][-WINDOW:])):
            names = sorted({n for r in window for n in r}, key=lambda n: -sum(r.get(n, 0.0) for r in window))
            print(f"mean store ms per round by method, {label}: "
                  + ", ".join(f"{n} {sum(r.get(n, 0.0) for r in window) / len(window) * 1000:.2f}" for n in names))
    print(f"ratio (last / first): {result['ratio']:.2f}x (goal <= {GOAL}x): {'ok' if result['ratio'] <= GOAL else 'over'}")
    return result


if __name__ == "__main__":
    main()
