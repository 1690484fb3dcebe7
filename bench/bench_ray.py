"""How does a batch scale over Ray actors? (goal: 2 actors >= 1.8x the throughput of 1)

The engine is reverie's `fixed` engine (a known time per image, sleeping, so two actors on a
two-core machine are two engines, as two GPUs would be). The same batch runs on 1 actor and on
2, each on a fresh home, side by side in one local Ray instance; actor start-up is left out of
the times (a cluster keeps its actors warm for the whole night). The head's overhead per image
is the CPU the head process spends per image (decoding the PNG bytes, storing, scoring,
scheduling), and the wall time per image the engines did not cover. Each pool renders a short
warm-up batch first, so first-call imports on the actors and the head are not counted.

    python bench/bench_ray.py [--ideas 4] [--per-prompt 16] [--latency 0.05] [--megapixels 0.02]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from reverie.orchestrator.studio import Studio

IDEAS = ["a fox in the rain", "a lighthouse at dusk", "a knight in a forest", "a red car at night",
         "a cat on a windowsill", "a city street in the snow", "a boat on a calm lake", "a dragon over mountains"]


def run(actors: int, ideas: list[str], per_prompt: int, latency: float, megapixels: float, root: Path) -> dict:
    file = root / f"ideas-{actors}.txt"
    file.write_text("\n".join(ideas) + "\n")
    warm = root / f"warm-{actors}.txt"
    warm.write_text("a warm-up idea\n")
    with Studio(home=root / f"home-{actors}", engine="fixed", engine_options={"latency": latency},
                scorer="heuristic", ray="local", workers=actors) as studio:
        # Every actor renders once first, and the head scores once: first-call imports are not the batch's.
        studio.batch(warm, per_prompt=2 * actors, n=2 * actors, keep=1, megapixels=megapixels)
        cpu0, t0 = time.process_time(), time.perf_counter()
        result = studio.batch(file, per_prompt=per_prompt, keep=2, megapixels=megapixels)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    renders = result.renders_this_session
    assert renders == len(ideas) * per_prompt, f"{renders} renders, expected {len(ideas) * per_prompt}"
    engine_wall = renders * latency / actors  # the wall time the engines alone would need
    return {"actors": actors, "renders": renders, "wall": wall, "images_per_s": renders / wall,
            "head_cpu_ms": cpu / renders * 1000, "uncovered_ms": max(0.0, wall - engine_wall) / renders * 1000}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ideas", type=int, default=4)
    ap.add_argument("--per-prompt", type=int, default=16)
    ap.add_argument("--latency", type=float, default=0.05, help="engine seconds per image")
    ap.add_argument("--megapixels", type=float, default=0.02)
    args = ap.parse_args(argv)

    import ray

    # Two logical CPUs whatever the machine: the fixed engine sleeps, so each actor is one engine.
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    ideas = (IDEAS * (args.ideas // len(IDEAS) + 1))[: args.ideas]
    results = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for actors in (1, 2):
                results[actors] = r = run(actors, ideas, args.per_prompt, args.latency, args.megapixels, Path(tmp))
                print(f"{actors} actor(s): {r['renders']} renders in {r['wall']:.2f}s = {r['images_per_s']:.1f} images/s "
                      f"(engine {args.latency * 1000:.0f} ms/image); head CPU {r['head_cpu_ms']:.1f} ms/image, "
                      f"wall not covered by the engines {r['uncovered_ms']:.1f} ms/image")
    finally:
        ray.shutdown()
    ratio = results[2]["images_per_s"] / results[1]["images_per_s"]
    print(f"throughput ratio 2 actors / 1 actor: {ratio:.2f}x (goal >= 1.8x)")
    return {"results": results, "ratio": ratio}


if __name__ == "__main__":
    main()
