"""How busy does a batch keep a two-server ComfyUI pool? (goal: each server >= 90% of the wall time)

Two scripted ComfyUI servers (tests/comfy_server.py: real HTTP and websocket on loopback, a
known time per sampling step) serve one 4-idea batch. The prompt writer is the offline formula
and the scorer the heuristic one, so the head's own work is small and the figure is about how
the pool is fed: whether each server always has a prompt waiting when it finishes one, across
seeds, rounds and ideas. A server's busy time is what it spent executing prompts, as the server
itself recorded it; the wall time is the whole batch() call after a warm-up batch.

    python bench/bench_pool.py [--ideas 4] [--per-prompt 16] [--n 4] [--step-delay 0.05]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.comfy_server, run from anywhere

from reverie.agents.expander import FormulaExpander, RuleCritic  # noqa: E402
from reverie.orchestrator.studio import Studio  # noqa: E402
from tests.comfy_server import ComfyServer  # noqa: E402

IDEAS = ["a fox in the rain", "a lighthouse at dusk", "a knight in a forest", "a red car at night",
         "a cat on a windowsill", "a city street in the snow", "a boat on a calm lake", "a dragon over mountains"]


def run(ideas: list[str], per_prompt: int, n: int, step_delay: float, megapixels: float, root: Path) -> dict:
    file = root / "ideas.txt"
    file.write_text("\n".join(ideas) + "\n")
    warm = root / "warm.txt"
    warm.write_text("a warm-up idea\n")
    with ComfyServer(step_delay=step_delay) as a, ComfyServer(step_delay=step_delay) as b:
        options = {"servers": [a.url, b.url], "poll_interval": 0.2, "timeout": 10.0}
        with Studio(home=root / "home", engine="comfyui", engine_options=options, scorer="heuristic",
                    expander=FormulaExpander(), critic=RuleCritic(FormulaExpander())) as studio:
            # First-call imports (PIL plugins, the scorer, the report) are not the batch's.
            studio.batch(warm, per_prompt=2, n=2, keep=1, megapixels=megapixels)
            t0 = time.perf_counter()
            result = studio.batch(file, per_prompt=per_prompt, n=n, keep=2, megapixels=megapixels)
            t1 = time.perf_counter()
        spans = [p for s in (a, b) for p in s.spans if p[0] >= t0]
        servers = [{"url": s.url, "busy": s.busy_seconds(t0, t1), "prompts": len([p for p in s.spans if p[0] >= t0])}
                   for s in (a, b)]
    lead, tail = min(p[0] for p in spans) - t0, t1 - max(p[1] for p in spans)
    renders = result.renders_this_session
    assert renders == len(ideas) * per_prompt, f"{renders} renders, expected {len(ideas) * per_prompt}"
    return {"wall": t1 - t0, "renders": renders, "servers": servers, "lead": lead, "tail": tail}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ideas", type=int, default=4)
    ap.add_argument("--per-prompt", type=int, default=16)
    ap.add_argument("--n", type=int, default=4, help="images per round")
    ap.add_argument("--step-delay", type=float, default=0.05, help="server seconds per sampling step (9 steps an image)")
    ap.add_argument("--megapixels", type=float, default=0.01)
    args = ap.parse_args(argv)
    ideas = (IDEAS * (args.ideas // len(IDEAS) + 1))[: args.ideas]
    with tempfile.TemporaryDirectory() as tmp:
        r = run(ideas, args.per_prompt, args.n, args.step_delay, args.megapixels, Path(tmp))
    print(f"{len(ideas)} ideas x {args.per_prompt} images (--n {args.n}) on 2 ComfyUI servers: "
          f"{r['renders']} renders in {r['wall']:.2f}s")
    for i, s in enumerate(r["servers"], 1):
        print(f"server {i}: busy {s['busy']:.2f}s of {r['wall']:.2f}s = {100 * s['busy'] / r['wall']:.0f}% "
              f"({s['prompts']} prompts)")
    print(f"before the first prompt: {r['lead']:.2f}s; after the last: {r['tail']:.2f}s (opening runs, the report)")
    low = min(s["busy"] / r["wall"] for s in r["servers"])
    print(f"least busy server: {100 * low:.0f}% of the wall time (goal >= 90%)")
    return {**r, "least_busy": low}


if __name__ == "__main__":
    main()
