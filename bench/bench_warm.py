"""Five `reverie make` in a row, each its own process as a person types them: in-process (`--local`:
every one imports torch and loads the model) against the same five handed to a warm `reverie serve`
on the home (the client imports no torch). Prints both totals and their ratio.

    python bench/bench_warm.py [--makes 5] [--n 2] [--megapixels 0.02] [--home DIR] [--also edit,expand]

`--also edit,expand` times the same number of `reverie edit` (of a small PNG) and `reverie expand`
each way too, one line each.

On the embedded tiny engine the load is small; with real weights on a GPU (about 20 GB for Z-Image
Turbo) the in-process column is mostly loading and the ratio grows with the model.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IDEA = "a fox in the rain"


def reverie(*args: str, home: Path) -> float:
    """Run one `reverie` command to its end; its wall time (the whole process: import to exit)."""
    env = {**os.environ, "NO_COLOR": "1"}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "reverie", *args, "--home", str(home)], capture_output=True, text=True,
                          env=env, timeout=1800)
    took = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"reverie {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return took


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> dict:
    from reverie.render.tiny import ensure_tiny_weights

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--makes", type=int, default=5)
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--megapixels", type=float, default=0.02)
    ap.add_argument("--home", default=None, help="a reverie home (default: a temp folder with the tiny weights)")
    ap.add_argument("--serve-args", default="", help="extra `reverie serve` flags, e.g. \"--device cuda\"")
    ap.add_argument("--also", default="", help="edit, expand or both (comma-separated): timed each way too")
    args = ap.parse_args(argv)
    also = [c for c in args.also.split(",") if c]
    if set(also) - {"edit", "expand"}:
        raise SystemExit("--also takes edit and expand")
    home = Path(args.home or tempfile.mkdtemp(prefix="reverie-warm-"))
    if args.home is None:
        ensure_tiny_weights(home / "models")
    make = ["make", IDEA, "--n", str(args.n), "--rounds", str(args.rounds), "--megapixels", str(args.megapixels)]
    others = {"expand": lambda i: ["expand", IDEA, "--k", "2", "--seed", str(i)]}
    if "edit" in also:
        from PIL import Image

        source = home / "bench-edit-source.png"
        Image.new("RGB", (96, 96), (40, 90, 160)).save(source)
        others["edit"] = lambda i: ["edit", str(source), "make it night", "--n", "1", "--rounds", "1", "--seed", str(i)]
    local = [reverie(*make, "--seed", str(i), "--local", home=home) for i in range(args.makes)]
    local_also = {c: [reverie(*others[c](i), "--local", home=home) for i in range(args.makes)] for c in also}
    port = free_port()
    started = reverie("serve", "--detach", "--port", str(port), *args.serve_args.split(), home=home)
    try:
        warm = [reverie(*make, "--seed", str(100 + i), home=home) for i in range(args.makes)]
        warm_also = {c: [reverie(*others[c](100 + i), home=home) for i in range(args.makes)] for c in also}
    finally:
        reverie("serve", "--stop", home=home)
    result = {"local": sum(local), "warm": sum(warm), "serve_start": started}
    result["ratio"] = result["local"] / result["warm"]
    print(f"{args.makes} × `reverie make` ({args.n} images, {args.rounds} round(s), {args.megapixels} MP), each its own process")
    print(f"  in-process (--local):        {result['local']:.2f} s  ({', '.join(f'{t:.1f}' for t in local)})")
    print(f"  through the warm server:     {result['warm']:.2f} s  ({', '.join(f'{t:.1f}' for t in warm)})")
    print(f"  ratio in-process / warm:     {result['ratio']:.2f}×  (starting the server once: {started:.1f} s)")
    for c in also:
        here, there = sum(local_also[c]), sum(warm_also[c])
        result[c] = {"local": here, "warm": there, "ratio": here / there}
        print(f"{args.makes} × `reverie {c}`: in-process {here:.2f} s, through the warm server {there:.2f} s, "
              f"ratio {here / there:.2f}×")
    return result


if __name__ == "__main__":
    main()
