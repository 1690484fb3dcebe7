"""Batched vs one-by-one scoring throughput, in one run; prints images per second and the ratio.

    python bench/bench_scoring.py                 # tiny random CLIP + aesthetic MLP (any CPU, seconds)
    python bench/bench_scoring.py --real --n 64   # the configured ViT-L/14 + aesthetic weights
    python bench/bench_scoring.py --arch ViT-L-14-quickgelu --n 64   # real architecture, random weights
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
from PIL import Image


def images(n: int, size: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)) for _ in range(n)]


def throughput(scorer, batch: list, batch_size: int) -> float:
    scorer.batch_size = batch_size
    ideas = ["a fox in the rain"] * len(batch)
    prompts = ["a red fox in the rain at dusk, soft light, detailed fur"] * len(batch)
    scorer.score(batch[:batch_size], ideas[:batch_size], prompts[:batch_size])  # warm-up
    start = time.perf_counter()
    if batch_size == 1:
        for im, idea, prompt in zip(batch, ideas, prompts):
            scorer.score([im], [idea], [prompt])
    else:
        scorer.score(batch, ideas, prompts)
    return len(batch) / (time.perf_counter() - start)


def random_scorer(arch: str, device: str | None):
    from reverie.scoring.aesthetic import AestheticMLP
    from reverie.scoring.clip import ClipModel
    from reverie.scoring.scorer import ClipScorer

    clip = ClipModel(arch, weights=None, device=device)
    return ClipScorer(clip, AestheticMLP(clip.embed_dim).eval())


def main() -> None:
    from reverie.scoring.scorer import make_scorer
    from reverie.scoring.tiny import write_tiny_scoring_weights

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="images to score each way")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--device", default="", help="cpu, cuda (default: cuda when available)")
    parser.add_argument("--real", action="store_true", help="use the configured CLIP weights, not the tiny model")
    parser.add_argument("--arch", default="", help="an open_clip architecture with random weights (nothing downloads)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if args.arch:
            scorer = random_scorer(args.arch, args.device or None)
        else:
            table = {} if args.real else write_tiny_scoring_weights(tmp)
            scorer = make_scorer("clip", table=table, device=args.device or None, pickscore="off")
        batch = images(args.n, args.size)
        one = throughput(scorer, batch, 1)
        many = throughput(scorer, batch, args.batch_size)
        scorer.close()
    print(f"scorer {scorer.name} ({scorer.clip.model_name}) on {scorer.clip.device}, {args.n} images of {args.size}px")
    print(f"one-by-one:        {one:8.1f} images/s")
    print(f"batched (size {args.batch_size:>3}): {many:8.1f} images/s")
    print(f"ratio batched/one-by-one: {many / one:.2f}x")


if __name__ == "__main__":
    main()
