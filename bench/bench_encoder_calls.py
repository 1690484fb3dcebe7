"""Text-encoder calls per render for N seeds of one prompt (goal: 1/N).

Runs the tiny Z-Image pipeline twice side by side: with the prompt-embedding cache (each
distinct prompt encoded once per run) and with the cache switched off (encoded once per
forward batch), and prints the ratio for each.

    python bench/bench_encoder_calls.py [--n 32] [--batch-size 4] [--size 64] [--steps 2]
"""

from __future__ import annotations

import argparse
import tempfile

from reverie.render.tiny import TinyEngine
from reverie.types import RenderSpec

PROMPT = "a fox in the rain, cinematic photo, soft light"


def encoder_calls_per_render(engine: TinyEngine, n: int, size: int, steps: int) -> float:
    specs = [RenderSpec(prompt=PROMPT, seed=seed, width=size, height=size, steps=steps, guidance=0.0,
                        profile="z-image-turbo", shift=3.0) for seed in range(n)]
    before = engine.encoder_calls
    outputs = engine.render(specs)
    assert len(outputs) == n
    return (engine.encoder_calls - before) / n


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--models-dir", default=None, help="where the tiny weights are (default: a temp folder)")
    args = ap.parse_args(argv)
    models_dir = args.models_dir or tempfile.mkdtemp(prefix="reverie-bench-")
    cached = TinyEngine(models_dir=models_dir, batch_size=args.batch_size)
    uncached = TinyEngine(models_dir=models_dir, batch_size=args.batch_size, embed_cache_size=0)
    result = {
        "n": args.n,
        "goal": 1 / args.n,
        "cached": encoder_calls_per_render(cached, args.n, args.size, args.steps),
        "uncached": encoder_calls_per_render(uncached, args.n, args.size, args.steps),
    }
    print(f"text-encoder calls per render, {args.n} seeds of one prompt (goal 1/N = {result['goal']:.4f})")
    print(f"  encode once per prompt (reverie): {result['cached']:.4f}")
    print(f"  cache off (once per batch of {args.batch_size}):  {result['uncached']:.4f}")
    print(f"  ratio cache-off / reverie: {result['uncached'] / result['cached']:.1f}x")
    return result


if __name__ == "__main__":
    main()
