"""How long each command that cannot run takes to say so: the real console script, as a person types
it, against `python -c pass` (the interpreter alone) and the 2 s goal. Each case is run `--repeats`
times on a fresh empty home; the median is printed.

    python bench/bench_failfast.py [--repeats 3] [--serve-stop]

`--serve-stop` also times `reverie serve` (tiny engine, one request rendering) from SIGINT and from
SIGTERM to its exit; the goal there is the same 2 s.

The numbers are for people (no test asserts a time): a loaded machine decides the seconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_S = 2.0

CASES = [
    ("--profile sdxl (no weights)", ["--profile", "sdxl"]),
    ("--engine diffusers (no weights)", ["--engine", "diffusers"]),
    ("--model-path /nope", ["--model-path", "/nope"]),
    ("--device cuda (no GPU)", ["--engine", "tiny", "--device", "cuda"]),
    ("--comfy-url 127.0.0.1:1 (no scheme, refused)", ["--comfy-url", "127.0.0.1:1"]),
    ("--comfy-url http://192.0.2.1:8188 (unroutable)", ["--comfy-url", "http://192.0.2.1:8188"]),
]


def timed(cmd: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    return time.perf_counter() - t0, done


def serve_stop_seconds(script: list[str], env: dict, signum: int) -> tuple[float, str]:
    """Seconds from the signal to the exit of a `reverie serve` (tiny engine) with a request rendering."""
    import json
    import signal
    import socket
    import sqlite3

    from reverie.render.tiny import ensure_tiny_weights

    with tempfile.TemporaryDirectory() as home:
        ensure_tiny_weights(Path(home) / "models")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen([*script, "serve", "--engine", "tiny", "--scorer", "heuristic", "--port", str(port),
                                 "--home", home], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        client = None
        try:
            end = time.monotonic() + 300
            while client is None and time.monotonic() < end and proc.poll() is None:
                try:
                    client = socket.create_connection(("127.0.0.1", port), timeout=1)
                except OSError:
                    time.sleep(0.2)
            body = json.dumps({"prompt": "a heron in fog", "n": 6, "quality": "hd", "size": "256x256"}).encode()
            client.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                           + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            while time.monotonic() < end:  # until the request has stored an image: a run is mid-way
                try:
                    with sqlite3.connect(Path(home) / "reverie.db", timeout=5) as db:
                        if db.execute("select count(*) from renders where status = 'ok'").fetchone()[0]:
                            break
                except sqlite3.Error:
                    pass
                time.sleep(0.2)
            t0 = time.perf_counter()
            proc.send_signal(signum)
            errors = proc.stderr.read()
            proc.wait(120)
            return time.perf_counter() - t0, errors.strip().splitlines()[-1]
        finally:
            if client is not None:
                client.close()
            if proc.poll() is None:
                proc.kill()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--serve-stop", action="store_true", help="Also time `reverie serve` stopping on SIGINT and SIGTERM.")
    args = ap.parse_args(argv)
    env = {**os.environ, "NO_COLOR": "1"}
    if os.path.exists("/dev/nvidia0"):
        env["CUDA_VISIBLE_DEVICES"] = "-1"  # the --device case is about a machine without a GPU
    exe = Path(sys.executable).with_name("reverie")
    script = [str(exe)] if exe.exists() else [sys.executable, "-m", "reverie"]
    baseline = statistics.median(timed([sys.executable, "-c", "pass"], env)[0] for _ in range(args.repeats))
    print(f"{'case':50} {'median':>8} {'- python':>9} {'goal':>6}  answer")
    print(f"{'python -c pass':50} {baseline:7.2f}s")
    results = {"baseline": baseline}
    for name, flags in CASES:
        times, line = [], ""
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as home:
                took, done = timed([*script, "make", "a fox", "--n", "1", "--rounds", "1", *flags, "--home", home], env)
            if done.returncode != 2:
                raise SystemExit(f"{name}: exit {done.returncode}, not 2: {done.stderr.strip()[-400:]}")
            times.append(took)
            line = done.stderr.strip().splitlines()[-1]
        median = statistics.median(times)
        results[name] = median
        verdict = "ok" if median < GOAL_S else "SLOW"
        print(f"{name:50} {median:7.2f}s {median - baseline:8.2f}s {verdict:>6}  {line[:70]}")
    if args.serve_stop:
        import signal

        for signum in (signal.SIGINT, signal.SIGTERM):
            took, line = serve_stop_seconds(script, env, signum)
            name = f"serve stop on {signum.name} (a run mid-way)"
            results[name] = took
            print(f"{name:50} {took:7.2f}s {'':>9} {'ok' if took < GOAL_S else 'SLOW':>6}  {line[:70]}")
    return results


if __name__ == "__main__":
    main()
