"""What the dreamer on a local causal LM costs: tokens per second and its share of a run's wall time.

Makes the same idea twice side by side in fresh homes: once with the prompts written by the LLM
in this process (the engine's own text encoder by default, or --llm-path FOLDER), once with the
offline formula expander (`[llm] backend = "off"`), and prints the generation speed, the share of
the run spent writing prompts and critiques, and the ratio of the two runs' wall times.

    python bench/bench_encoder.py                         # the tiny engine's random Qwen3 encoder
    python bench/bench_encoder.py --llm-path /models/Qwen3-8B
    python bench/bench_encoder.py --engine diffusers --model-path /models/Z-Image-Turbo  # its Qwen3-4B

On the tiny engine the encoder is a 2-layer random model whose answers are refused and replaced by
the formula: the numbers measure the machinery (prompt, constrained sampling, bounds), not a real
model's speed.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

IDEA = "a red fox in the rain at dusk"


def one_run(home: Path, backend: str, args) -> dict:
    from reverie.orchestrator.studio import Studio

    home.mkdir(parents=True, exist_ok=True)
    if args.models_dir:
        (home / "models").symlink_to(Path(args.models_dir).resolve(), target_is_directory=True)
    lines = ["[llm]", f'backend = "{backend}"', f"retries = {args.retries}"]
    (home / "reverie.toml").write_text("\n".join(lines) + "\n")
    engine = args.engine
    with Studio(home=home, engine=engine, model_path=args.model_path, llm_path=args.llm_path if backend != "off" else None,
                progress=lambda event: None) as studio:
        started = time.perf_counter()
        result = studio.make(IDEA, n=args.n, rounds=args.rounds, seed=1, megapixels=args.megapixels)
        wall = time.perf_counter() - started
        calls = studio.store.llm_calls(result.run_id)
    seconds = sum(c["seconds"] or 0.0 for c in calls)
    tokens = sum(c["completion_tokens"] or 0 for c in calls)
    return {"backend": backend, "wall": wall, "llm_seconds": seconds, "tokens": tokens, "calls": len(calls),
            "tokens_per_second": tokens / seconds if seconds else 0.0, "share": seconds / wall if wall else 0.0,
            "usable": sum(1 for c in calls if c["ok"]), "renders": len(result.renders)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2, help="images per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--megapixels", type=float, default=0.01)
    ap.add_argument("--engine", default="tiny", help="tiny (default) or diffusers (with --model-path)")
    ap.add_argument("--model-path", default=None, help="the diffusers Z-Image folder whose text encoder writes")
    ap.add_argument("--llm-path", default=None, help="a Hugging Face causal-LM folder to write with instead")
    ap.add_argument("--retries", type=int, default=0, help="extra tries after an unusable answer")
    ap.add_argument("--models-dir", default=None, help="where the tiny weights are (default: built in a temp home)")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="reverie-bench-encoder-"))
    if args.models_dir is None:  # one copy of the tiny weights for both runs, built before either
        from reverie.render.tiny import ensure_tiny_weights

        args.models_dir = str(work / "models")
        ensure_tiny_weights(work / "models")
    try:
        backend = "encoder" if args.llm_path is None else "auto"
        local = one_run(work / "local", backend, args)
        formula = one_run(work / "formula", "off", args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    writer = args.llm_path or f"the {args.engine} engine's text encoder"
    print(f"dreamer on {writer}: {args.rounds} rounds of {args.n}, {local['renders']} renders each")
    print(f"  generation: {local['tokens']} tokens in {local['llm_seconds']:.2f} s over {local['calls']} calls "
          f"= {local['tokens_per_second']:.1f} tokens/s ({local['usable']} usable answers)")
    print(f"  writing prompts and critiques: {local['share']:.1%} of the run's {local['wall']:.2f} s wall time")
    print(f"  same run with the formula expander: {formula['wall']:.2f} s; "
          f"ratio local-LLM / formula: {local['wall'] / formula['wall']:.2f}x")
    return {"local": local, "formula": formula}


if __name__ == "__main__":
    main()
