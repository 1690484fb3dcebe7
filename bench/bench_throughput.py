"""Batched vs one-by-one rendering on the tiny pipeline: images per second, same run.

    python bench/bench_throughput.py [--n 16] [--batch-size 4] [--size 128] [--steps 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from reverie.render.tiny import TinyEngine
from reverie.types import RenderSpec


def images_per_second(engine: TinyEngine, n: int, size: int, steps: int) -> float:
    def specs(first_seed: int) -> list[RenderSpec]:
        return [RenderSpec(prompt="a lighthouse at dusk", seed=first_seed + i, width=size, height=size, steps=steps,
                           guidance=0.0, profile="z-image-turbo", shift=3.0) for i in range(n)]

    engine.render(specs(10_000)[: engine.batch_size or 1])  # load and warm up
    t0 = time.perf_counter()
    outputs = engine.render(specs(0))
    seconds = time.perf_counter() - t0
    assert len(outputs) == n
    return n / seconds


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models-dir", default=None, help="where the tiny weights are (default: a temp folder)")
    args = ap.parse_args(argv)
    models_dir = args.models_dir or tempfile.mkdtemp(prefix="reverie-bench-")
    one = TinyEngine(models_dir=models_dir, batch_size=1, device=args.device)
    batched = TinyEngine(models_dir=models_dir, batch_size=args.batch_size, device=args.device)
    result = {"one_by_one": images_per_second(one, args.n, args.size, args.steps),
              "batched": images_per_second(batched, args.n, args.size, args.steps)}
    result["speedup"] = result["batched"] / result["one_by_one"]
    print(f"tiny pipeline, {args.n} images of {args.size}x{args.size}, {args.steps} steps, on {args.device}")
    print(f"  one by one:        {result['one_by_one']:.2f} images/s")
    print(f"  batch of {args.batch_size:<3d}:      {result['batched']:.2f} images/s")
    print(f"  batched / one-by-one: {result['speedup']:.2f}x")
    return result


if __name__ == "__main__":
    main()
