"""A plain hand-written diffusers loop against reverie on the same model, N, size and steps
(goal: reverie make / plain loop <= 1.02 on the tiny engine).

Three ways to make the same N images, interleaved so drift in machine load hits them alike:
  plain     the loop a user writes: ZImagePipeline from the same folder, batches of B seeds,
            one generator per seed, each image saved with Pillow's `save(path)`;
  engine    reverie's engine path: DiffusersEngine.render plus Store.add_render (PNG with its
            metadata, content-addressed write, SQLite row), no expansion or scoring;
  make      `reverie make` in process (Studio.make: expansion, the LangGraph loop, checkpoints,
            storing and heuristic scoring overlapped with rendering), one round.
It prints the median of each and the ratios to the plain loop. Then the whole process, as a
person runs it (import to exit): the plain loop as a script against the `reverie make` command,
both at the profile's steps, with how long each took to its last line and to its exit (the exit lag).

    python bench/bench_vs_diffusers.py [--n 16] [--size 256] [--steps 9] [--batch-size 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

GOAL = 1.02
IDEA = "a fox in the rain"


def plain_loop(folder: str, prompt: str, seeds: list[int], size: int, steps: int, batch: int, out: Path) -> float:
    import torch
    from diffusers import ZImagePipeline

    pipe = PIPES.get(folder)
    if pipe is None:  # loaded once, as a user's script keeps its pipeline
        pipe = PIPES[folder] = ZImagePipeline.from_pretrained(folder, torch_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(seeds), batch):
            chunk = seeds[i : i + batch]
            images = pipe(prompt=[prompt] * len(chunk), height=size, width=size, num_inference_steps=steps,
                          guidance_scale=0.0, generator=[torch.Generator().manual_seed(s) for s in chunk]).images
            for seed, image in zip(chunk, images):
                image.save(out / f"{seed}.png")
    return time.perf_counter() - t0


PIPES: dict = {}

PLAIN_SCRIPT = """
import sys
import torch
from diffusers import ZImagePipeline

folder, prompt, n, size, steps, batch, out = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7]), sys.argv[7]
pipe = ZImagePipeline.from_pretrained(folder, torch_dtype=torch.float32)
pipe.set_progress_bar_config(disable=True)
with torch.inference_mode():
    for i in range(0, n, batch):
        seeds = list(range(i, min(n, i + batch)))
        images = pipe(prompt=[prompt] * len(seeds), height=size, width=size, num_inference_steps=steps,
                      guidance_scale=0.0, generator=[torch.Generator().manual_seed(s) for s in seeds]).images
        for seed, image in zip(seeds, images):
            image.save(f"{out}/{seed}.png")
print("saved", n)
"""


def whole_process(cmd: list[str]) -> tuple[float, float]:
    """Seconds from start to the command's last line of output, and to its exit."""
    import subprocess
    import sys

    env = {**os.environ, "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *cmd], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    last = t0
    for _ in proc.stdout:
        last = time.perf_counter()
    code = proc.wait()
    ended = time.perf_counter()
    if code != 0:
        raise SystemExit(f"{' '.join(cmd[:3])}... exited {code}")
    return last - t0, ended - t0


def whole(home: Path, folder: str, prompt: str, n: int, size: int, steps: int, batch: int, megapixels: float,
          repeats: int) -> dict:
    script = home / "plain_script.py"
    script.write_text(PLAIN_SCRIPT)
    out = home / "plain-whole"
    out.mkdir(exist_ok=True)
    runs: dict[str, list[tuple[float, float]]] = {"plain": [], "make": []}
    for r in range(repeats):
        runs["plain"].append(whole_process([str(script), folder, prompt, str(n), str(size), str(steps), str(batch), str(out)]))
        runs["make"].append(whole_process(["-m", "reverie", "make", IDEA, "--n", str(n), "--rounds", "1", "--megapixels",
                                           str(megapixels), "--seed", str(1000 + r), "--batch-size", str(batch),
                                           "--local", "--home", str(home)]))
    best = {k: min(v, key=lambda t: t[1]) for k, v in runs.items()}
    return {"plain_whole": best["plain"][1], "make_whole": best["make"][1], "make_to_last_line": best["make"][0],
            "plain_to_last_line": best["plain"][0], "whole_ratio": best["make"][1] / best["plain"][1],
            "exit_lag": best["make"][1] - best["make"][0]}


def engine_path(engine, store, run_id: str, prompt_id: int, prompt: str, seeds: list[int], size: int, steps: int,
                split: dict | None = None) -> float:
    """Render and store; `split` adds up the seconds inside the engine's batches and in storing."""
    from reverie.types import RenderSpec

    specs = [RenderSpec(prompt=prompt, seed=s, width=size, height=size, steps=steps, guidance=0.0,
                        profile="z-image-turbo", shift=3.0) for s in seeds]
    storing = [0.0]

    def store_one(output):
        t = time.perf_counter()
        store.add_render(run_id, prompt_id, 0, output, batch_size=engine.batch_size)
        storing[0] += time.perf_counter() - t

    forward = engine.forward_seconds
    t0 = time.perf_counter()
    engine.render(specs, on_output=store_one)
    total = time.perf_counter() - t0
    if split is not None:
        split.setdefault("batches", []).append(engine.forward_seconds - forward)
        split.setdefault("storing", []).append(storing[0])
        split.setdefault("total", []).append(total)
    return total


def main(argv: list[str] | None = None) -> dict:
    from reverie.orchestrator.studio import Studio
    from reverie.render.tiny import TinyEngine, ensure_tiny_weights
    from reverie.store.db import Store
    from reverie.types import Expansion, Request

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=9)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--home", default=None, help="a reverie home (default: a temp folder)")
    ap.add_argument("--whole-repeats", type=int, default=1, help="whole-process repeats (0 skips them)")
    args = ap.parse_args(argv)
    home = Path(args.home or tempfile.mkdtemp(prefix="reverie-bench-"))
    folder = str(ensure_tiny_weights(home / "models"))
    megapixels = args.size * args.size / 2**20
    times: dict[str, list[float]] = {"plain": [], "engine": [], "make": []}
    split: dict[str, list[float]] = {}
    with Studio(home=home, engine="tiny", scorer="heuristic", engine_options={"batch_size": args.batch_size}) as studio:
        # Warm-up: loads the model, fills caches, and gives the prompt reverie expands the idea to,
        # which the other two then use, so the text encoder sees the same text everywhere.
        warm = studio.make(IDEA, n=1, rounds=1, megapixels=megapixels, seed=10_000, steps=args.steps)
        prompt = warm.renders[0].spec.prompt
        size = warm.renders[0].spec.width
        engine = TinyEngine(models_dir=home / "models", batch_size=args.batch_size)
        store = Store(home / "engine-path")
        run_id = store.create_run(Request(idea=IDEA, n=args.n), "tiny", 0)
        prompt_id = store.add_prompt(run_id, Expansion(prompt=prompt, negative="", source="user"), 0)
        plain_loop(folder, prompt, [10_000], size, args.steps, 1, home / "plain")
        engine_path(engine, store, run_id, prompt_id, prompt, [10_000], size, args.steps)
        for r in range(args.repeats):
            seeds = list(range(r * args.n, (r + 1) * args.n))
            times["plain"].append(plain_loop(folder, prompt, seeds, size, args.steps, args.batch_size, home / "plain"))
            times["engine"].append(engine_path(engine, store, run_id, prompt_id, prompt, seeds, size, args.steps, split))
            t0 = time.perf_counter()
            # A new seed each repeat: the same command would continue (and skip) the last run.
            done = studio.make(IDEA, n=args.n, rounds=1, megapixels=megapixels, seed=r, steps=args.steps)
            times["make"].append(time.perf_counter() - t0)
            assert len(done.renders) == args.n, f"make rendered {len(done.renders)} of {args.n}"
        store.close()
        engine.close()
    # Best of the repeats: other work on the machine only ever adds time, so the fastest repeat
    # is the one it disturbed least; the median is printed beside it.
    result = {k: min(v) for k, v in times.items()}
    median = {k: statistics.median(v) for k, v in times.items()}
    result["engine_ratio"] = result["engine"] / result["plain"]
    result["make_ratio"] = result["make"] / result["plain"]
    print(f"tiny Z-Image pipeline on CPU: {args.n} images of {size}x{size}, {args.steps} steps, batches of "
          f"{args.batch_size}, best (median) of {args.repeats} interleaved repeats")
    print(f"  plain diffusers loop + Pillow save:   {result['plain']:.2f} s ({median['plain']:.2f})")
    print(f"  reverie engine path (render + store): {result['engine']:.2f} s ({median['engine']:.2f})  "
          f"ratio {result['engine_ratio']:.3f} ({median['engine'] / median['plain']:.3f})")
    print(f"  reverie make (whole loop):            {result['make']:.2f} s ({median['make']:.2f})  "
          f"ratio {result['make_ratio']:.3f} ({median['make'] / median['plain']:.3f})  goal <= {GOAL}")
    # Where the engine path's time goes, each repeat on its own (steadier than ratios across repeats
    # on a busy machine): the engine's batches (the pipeline call and reverie's code around it),
    # storing (PNG with metadata, fsync'd content-addressed write, SQLite row), and the rest.
    batches, storing, total = (sum(split[k]) for k in ("batches", "storing", "total"))
    result["engine_own"] = (total - batches - storing) / batches
    result["storing_share"] = storing / batches
    print(f"  engine path split: outside the batches {result['engine_own']:.2%}, storing {result['storing_share']:.2%} "
          f"of the time in batches (`make` stores beside the next render)")
    if args.whole_repeats:
        from reverie.profiles import get_profile

        profile_steps = get_profile("z-image-turbo").steps
        result.update(whole(home, folder, prompt, args.n, size, profile_steps, args.batch_size, megapixels,
                            args.whole_repeats))
        print(f"  whole process, import to exit ({profile_steps} steps, the profile's), best of {args.whole_repeats}:")
        print(f"    plain diffusers script: {result['plain_whole']:.2f} s")
        print(f"    reverie make:           {result['make_whole']:.2f} s  ratio {result['whole_ratio']:.3f}  "
              f"goal <= 1.05 (last line at {result['make_to_last_line']:.2f} s: exit lag {result['exit_lag']:.2f} s)")
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1):
        print(f"  note: load average {load:.1f} on {os.cpu_count()} cores: other work shares the CPU, so the ratios "
              f"between repeats are noisy; the split above is measured within each repeat")
    return result


if __name__ == "__main__":
    main()
