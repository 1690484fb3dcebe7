"""Z-Image Turbo at full size on a GPU: a plain diffusers loop against reverie's engine.

The full architecture is built in code with random weights from the published configs (the
dicts below: the 6B ZImageTransformer2DModel, the Qwen3-4B text encoder, the Flux-style
AutoencoderKL), so nothing downloads; the timings and memory are those of the real shapes,
the pictures are noise. One run measures, side by side:
  - s/image and peak GPU memory, plain loop vs reverie's DiffusersEngine, batch sizes 1, 2, 4,
    without and with torch.compile of the transformer;
  - the parts: one text-encoder call, one VAE decode, PNG encoding with reverie's metadata,
    and scoring (CLIP ViT-L/14 + aesthetic MLP, random weights), each as a share of one image.
It prints markdown tables docs/benchmarks.md can take.

    python bench/bench_gpu.py --size full [--images 8] [--batches 1,2,4] [--compile both]
    python bench/bench_gpu.py --size tiny      # the same code path, tiny configs, on CPU

--size full needs CUDA (bf16); --size tiny runs anywhere (float32 on CPU) and is in the test suite.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

# From the published Tongyi-MAI/Z-Image-Turbo configs (transformer/, text_encoder/, vae/, scheduler/).
FULL: dict[str, dict[str, Any]] = {
    "transformer": {
        "all_patch_size": [2], "all_f_patch_size": [1], "in_channels": 16, "dim": 3840, "n_layers": 30,
        "n_refiner_layers": 2, "n_heads": 30, "n_kv_heads": 30, "norm_eps": 1e-5, "qk_norm": True,
        "cap_feat_dim": 2560, "rope_theta": 256.0, "t_scale": 1000.0, "axes_dims": [32, 48, 48],
        "axes_lens": [1536, 512, 512],
    },
    "text_encoder": {  # Qwen3-4B (the pipeline uses the base model's hidden states)
        "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "max_position_embeddings": 40960,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": True, "hidden_act": "silu",
    },
    "vae": {
        "in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2, "latent_channels": 16, "norm_num_groups": 32, "sample_size": 1024,
        "scaling_factor": 0.3611, "shift_factor": 0.1159, "use_quant_conv": False, "use_post_quant_conv": False,
        "mid_block_add_attention": True,
    },
    "scheduler": {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False},
    "scoring": {"arch": "ViT-L-14"},
}

# The tiny engine's numbers (reverie/render/tiny.py): the same classes, small enough for a CPU.
TINY: dict[str, dict[str, Any]] = {
    "transformer": {
        "all_patch_size": [2], "all_f_patch_size": [1], "in_channels": 16, "dim": 64, "n_layers": 2,
        "n_refiner_layers": 1, "n_heads": 2, "n_kv_heads": 2, "norm_eps": 1e-5, "qk_norm": True, "cap_feat_dim": 32,
        "rope_theta": 256.0, "t_scale": 1000.0, "axes_dims": [16, 8, 8], "axes_lens": [1024, 512, 512],
    },
    "text_encoder": {
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 2048, "max_position_embeddings": 1024,
    },
    "vae": {
        "in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [16, 16, 16, 16], "layers_per_block": 1,
        "latent_channels": 16, "norm_num_groups": 8, "sample_size": 128, "scaling_factor": 0.3611,
        "shift_factor": 0.1159,
    },
    "scheduler": {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False},
    "scoring": {"arch": "tiny"},
}

PROMPT = ("a red fox in the rain at dusk, cinematic photo, soft light, detailed fur, bokeh, 50mm lens, "
          "misty forest background, volumetric light, highly detailed")


def build_pipeline(configs: dict, device: str, dtype):
    """ZImagePipeline with random weights; each part is cast as soon as it is built, so the
    float32 copy of only one part is ever in memory."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    from reverie.render.tiny import build_tokenizer

    torch.manual_seed(0)
    with torch.device(device):
        text_encoder = Qwen3Model(Qwen3Config(**configs["text_encoder"])).to(dtype).eval()
        transformer = ZImageTransformer2DModel(**configs["transformer"]).to(dtype).eval()
        vae = AutoencoderKL(**configs["vae"]).to(dtype).eval()
    with torch.no_grad():
        # Allocated with torch.empty upstream: garbage (even NaN) until weights are loaded.
        transformer.x_pad_token.copy_(torch.ones_like(transformer.x_pad_token))
        transformer.cap_pad_token.copy_(torch.ones_like(transformer.cap_pad_token))
    pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(**configs["scheduler"]), vae=vae,
                          text_encoder=text_encoder, tokenizer=build_tokenizer(), transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reverie_engine(pipe, device: str, dtype_name: str, batch_size: int):
    """reverie's engine around the in-memory pipeline (its load() would read the same from a folder)."""
    from reverie.render.diffusers_engine import DiffusersEngine

    engine = DiffusersEngine(profile="z-image-turbo", device=device, dtype=dtype_name, batch_size=batch_size)
    engine.dtype = pipe.transformer.dtype
    engine._base_scheduler = pipe.scheduler
    engine._base_shift = getattr(pipe.scheduler.config, "shift", None)
    engine.pipe = pipe
    return engine


class Clock:
    """Wall time and peak accelerator memory of a block, synchronised on CUDA."""

    def __init__(self, device: str):
        import torch

        self.cuda = device.startswith("cuda")
        self.torch = torch

    def __call__(self, fn: Callable[[], Any]) -> tuple[float, float | None]:
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        fn()
        if self.cuda:
            self.torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        return seconds, (self.torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None)


def plain_loop(pipe, seeds: list[int], batch: int, side: int, steps: int) -> None:
    """What a user writes: the prompt goes to the pipeline each call, one generator per seed."""
    import torch

    for i in range(0, len(seeds), batch):
        chunk = seeds[i : i + batch]
        pipe(prompt=[PROMPT] * len(chunk), height=side, width=side, num_inference_steps=steps, guidance_scale=0.0,
             generator=[torch.Generator().manual_seed(s) for s in chunk]).images


def reverie_render(engine, seeds: list[int], side: int, steps: int) -> None:
    from reverie.types import RenderSpec

    specs = [RenderSpec(prompt=PROMPT, seed=s, width=side, height=side, steps=steps, guidance=0.0,
                        profile="z-image-turbo", shift=3.0) for s in seeds]
    outputs = engine.render(specs)
    assert len(outputs) == len(seeds) and all(o.image is not None for o in outputs)


def scorer_for(configs: dict, device: str, folder: str):
    if configs["scoring"]["arch"] == "tiny":
        from reverie.scoring.scorer import make_scorer
        from reverie.scoring.tiny import write_tiny_scoring_weights

        return make_scorer("clip", table=write_tiny_scoring_weights(folder), device=device, pickscore="off")
    from reverie.scoring.aesthetic import AestheticMLP
    from reverie.scoring.clip import ClipModel
    from reverie.scoring.scorer import ClipScorer

    clip = ClipModel(configs["scoring"]["arch"], weights=None, device=device)
    return ClipScorer(clip, AestheticMLP(clip.embed_dim).eval())


def parts(pipe, engine, configs: dict, device: str, side: int, steps: int, repeats: int) -> dict[str, float]:
    """Seconds per call of each part, median of `repeats`."""
    import torch

    from reverie.store.pngmeta import a1111_parameters, encode_png
    from reverie.types import RenderSpec

    clock = Clock(device)
    spec = RenderSpec(prompt=PROMPT, seed=1, width=side, height=side, steps=steps, guidance=0.0, profile="z-image-turbo",
                      shift=3.0)
    image = engine.render([spec])[0].image
    latents = torch.randn(1, pipe.vae.config.latent_channels, side // 8, side // 8, device=device, dtype=pipe.vae.dtype)
    meta = {"format": 1, "run_id": "bench", "spec": spec.to_dict(), "spec_sha": spec.sha, "engine": engine.name}
    with tempfile.TemporaryDirectory() as folder:
        scorer = scorer_for(configs, device, folder)
        timed = {
            "text encoder (one prompt)": lambda: pipe.encode_prompt(prompt=PROMPT, device=device,
                                                                   do_classifier_free_guidance=False),
            "VAE decode (one image)": lambda: pipe.vae.decode(latents, return_dict=False),
            "PNG encode with metadata (one image)": lambda: encode_png(image, a1111_parameters(spec, "bench"), meta),
            "scoring (one image)": lambda: scorer.score([image.convert("RGB")], ["a fox"], [PROMPT]),
        }
        out = {}
        with torch.no_grad():
            for name, fn in timed.items():
                fn()  # warm-up
                out[name] = statistics.median(clock(fn)[0] for _ in range(repeats))
        scorer.close()
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=("tiny", "full"), default="full")
    ap.add_argument("--images", type=int, default=None, help="images per measurement (default: 8 full, 4 tiny)")
    ap.add_argument("--batches", default="1,2,4", help="batch sizes, comma-separated")
    ap.add_argument("--compile", choices=("off", "on", "both"), default=None,
                    help="torch.compile of the transformer (default: both full, off tiny)")
    ap.add_argument("--resolution", type=int, default=None, help="image side (default: 1024 full, 64 tiny)")
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default: 9 full, 2 tiny)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of each part timing")
    args = ap.parse_args(argv)

    import torch

    full = args.size == "full"
    if full and not torch.cuda.is_available():
        print("bench_gpu: --size full needs a CUDA GPU (torch sees none here); run --size tiny for the CPU check",
              file=sys.stderr)
        raise SystemExit(2)
    device, dtype, dtype_name = ("cuda", torch.bfloat16, "bfloat16") if full else ("cpu", torch.float32, "float32")
    configs = FULL if full else TINY
    n = args.images or (8 if full else 4)
    side = args.resolution or (1024 if full else 64)
    steps = args.steps or (9 if full else 2)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile or ("both" if full else "off")]
    from reverie.render.diffusers_engine import quiet_libraries

    quiet_libraries()
    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    pipe = build_pipeline(configs, device, dtype)
    params = {k: sum(p.numel() for p in getattr(pipe, k).parameters()) / 1e9 for k in ("transformer", "text_encoder", "vae")}
    where = torch.cuda.get_device_name() if full else "CPU"
    print(f"Z-Image Turbo architecture ({args.size}), random weights, {dtype_name} on {where}; built in "
          f"{time.perf_counter() - t0:.0f} s; parameters (B): " + ", ".join(f"{k} {v:.3f}" for k, v in params.items()))
    clock = Clock(device)
    rows = []
    for compiled in modes:
        if compiled:
            pipe.transformer.compile()
        for batch in batches:
            engine = reverie_engine(pipe, device, dtype_name, batch)
            seeds = list(range(n))
            # Warm-up at this batch shape (and compilation, when on) for both, outside the clock.
            plain_loop(pipe, seeds[:batch], batch, side, steps)
            reverie_render(engine, seeds[:batch], side, steps)
            for path, fn in (("plain diffusers loop", lambda: plain_loop(pipe, seeds, batch, side, steps)),
                             ("reverie engine", lambda: reverie_render(engine, seeds, side, steps))):
                seconds, peak = clock(fn)
                rows.append({"path": path, "compile": compiled, "batch": batch, "s_per_image": seconds / n,
                             "peak_gib": peak})
            engine._embeds.clear()
    by = {(r["compile"], r["batch"], r["path"]): r for r in rows}
    print(f"\n{n} images of {side}x{side}, {steps} steps per measurement\n")
    print("| path | torch.compile | batch | s/image | images/s | peak GPU memory (GiB) | vs plain loop |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        plain = by[(r["compile"], r["batch"], "plain diffusers loop")]["s_per_image"]
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "-"
        print(f"| {r['path']} | {'on' if r['compile'] else 'off'} | {r['batch']} | {r['s_per_image']:.3f} | "
              f"{1 / r['s_per_image']:.2f} | {peak} | {r['s_per_image'] / plain:.3f} |")
    engine = reverie_engine(pipe, device, dtype_name, 1)
    image_seconds = by[(modes[-1], batches[0], "reverie engine")]["s_per_image"]
    part_seconds = parts(pipe, engine, configs, device, side, steps, args.repeats)
    print(f"\n| part | s per call | share of one image (reverie, batch {batches[0]}, compile "
          f"{'on' if modes[-1] else 'off'}: {image_seconds:.3f} s) |")
    print("|---|---:|---:|")
    for name, seconds in part_seconds.items():
        print(f"| {name} | {seconds:.4f} | {seconds / image_seconds:.1%} |")
    print("\nreverie encodes each distinct prompt once per run (the plain loop once per batch); the VAE decode "
          "is inside s/image, PNG encoding and scoring run beside the next render in `reverie make`.")
    return {"rows": rows, "parts": part_seconds, "params": params}


if __name__ == "__main__":
    main()
