"""What an edit costs beside a text-to-image render of the same size, on the same engine.

An img2img edit (Z-Image Turbo, the fallback editor) runs only `strength` of the steps, plus one
VAE encode of the source; an instruction editor (FLUX.2 [klein], Kontext) runs every step with the
source's tokens beside the image's, so each step attends over about twice as many. The bench
renders the same seeds both ways after one warm-up each and prints seconds per image and the
edit's share of the text-to-image time.

    python bench/bench_edit.py [--profile z-image-turbo|flux2-klein-4b|flux1-kontext-dev]
                               [--model-path DIR] [--size 256] [--n 4] [--steps N] [--strength 0.6]

Without --model-path it runs the tiny random-weight build of the profile (no downloads).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="z-image-turbo")
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--models-dir", default=None, help="Where the tiny builds are kept (default: a temp folder).")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--strength", type=float, default=0.6)
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)

    import numpy as np
    from PIL import Image

    from reverie.profiles import get_profile
    from reverie.render.diffusers_engine import DiffusersEngine
    from reverie.types import RenderSpec, ReverieError, Source

    profile = get_profile(args.profile)
    models_dir = Path(args.models_dir or tempfile.mkdtemp(prefix="reverie-bench-edit-"))
    model_path = args.model_path
    if model_path is None:
        if profile.name == "z-image-turbo":
            from reverie.render.tiny import ensure_tiny_weights

            model_path = str(ensure_tiny_weights(models_dir))
        else:
            from reverie.render.tiny import ensure_tiny_editor

            model_path = str(ensure_tiny_editor(models_dir, profile.name))
    engine = DiffusersEngine(model_path=model_path, profile=profile.name, device=args.device,
                             dtype="float32" if args.device in (None, "cpu") else None, batch_size=1)
    size = max(64, args.size // profile.multiple * profile.multiple)
    source_path = models_dir / "bench-source.png"
    Image.fromarray((np.random.default_rng(0).random((size, size, 3)) * 255).astype("uint8")).save(source_path)
    source = Source(image_sha="0" * 64, image_path=str(source_path), width=size, height=size,
                    instruction="make it night", strength=args.strength)
    steps = args.steps or profile.steps

    def spec(seed: int, edit: bool) -> RenderSpec:
        return RenderSpec(prompt="a lighthouse on a cliff at dusk" if not edit else "make it night", seed=seed,
                          width=size, height=size, steps=steps, guidance=profile.guidance, profile=profile.name,
                          source=source if edit else None)

    results: dict[str, float] = {}
    for kind in ("t2i", "edit"):
        try:
            engine.render([spec(10_000, kind == "edit")])  # warm-up: loading, first-call allocations
        except ReverieError as e:  # an editor-only profile (Kontext, or FLUX.2 before the line-up's adapter)
            print(f"  {kind}: not run ({e})")
            continue
        t0 = time.perf_counter()
        engine.render([spec(seed, kind == "edit") for seed in range(args.n)])
        results[kind] = (time.perf_counter() - t0) / args.n
    engine.close()
    print(f"{profile.name} at {size}x{size}, {steps} steps, {args.n} images each, batch 1:")
    for kind, seconds in results.items():
        print(f"  {kind:<5} {seconds:8.3f} s/image")
    if "t2i" in results:
        results["edit_share"] = results["edit"] / results["t2i"]
        print(f"  the edit takes {results['edit_share']:.2f}x the time of a text-to-image render of the same size"
              + (f" (img2img strength {args.strength}: about that share of the steps, plus a VAE encode)"
                 if profile.name == "z-image-turbo" else ""))
    return results


if __name__ == "__main__":
    main()
