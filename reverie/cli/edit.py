"""`edit`: make's loop on a source image (the command is registered in reverie.cli)."""

from __future__ import annotations

import json
from typing import List, Optional

import typer
from rich.text import Text

from reverie.cli.common import (BATCH_SIZE, COMFY_FILE, COMFY_URL, CONFIG, CPU_OFFLOAD, DEVICE, DTYPE, ENGINE, HOME, LLM_MODEL,
                                LLM_PATH, LLM_TIMEOUT, LLM_URL, MODEL_PATH, SCORER, CliProgress, friendly, open_studio, out,
                                print_images)


@friendly
def edit(
    source: str = typer.Argument(..., help="The image to edit: a PNG/JPEG/WebP path, or a render id or sha prefix from this home."),
    instruction: str = typer.Argument(..., help='What to change, e.g. "make it night".'),
    n: int = typer.Option(4, "--n", help="Edits per round."),
    rounds: int = typer.Option(2, "--rounds", help="Most rounds to run."),
    target: Optional[float] = typer.Option(None, "--target", help="Stop when the best composite score reaches this."),
    mask: Optional[str] = typer.Option(None, "--mask", help="A mask the size of the source: white is changed, black kept (inpainting)."),
    strength: float = typer.Option(0.6, "--strength", help="img2img editors: how far from the source (0-1]; instruction editors ignore it."),
    profile: Optional[str] = typer.Option(None, "--profile", help="Editor profile (default: the first instruction editor present, else z-image-turbo img2img)."),
    engine: str = ENGINE,
    scorer: str = SCORER,
    seed: Optional[int] = typer.Option(None, "--seed", help="First seed (random if not given)."),
    home: Optional[str] = HOME,
    model_path: Optional[str] = MODEL_PATH,
    llm_url: Optional[str] = LLM_URL,
    llm_model: Optional[str] = LLM_MODEL,
    llm_timeout: Optional[float] = LLM_TIMEOUT,
    llm_path: Optional[str] = LLM_PATH,
    config: Optional[str] = CONFIG,
    comfy_url: Optional[List[str]] = COMFY_URL,
    comfy_file: Optional[List[str]] = COMFY_FILE,
    device: Optional[str] = DEVICE,
    dtype: Optional[str] = DTYPE,
    batch_size: Optional[int] = BATCH_SIZE,
    cpu_offload: bool = CPU_OFFLOAD,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table (make's shape)."),
):
    """Edit an image: n candidates per round from the source, scored, the best kept."""
    from reverie.orchestrator.edit import check_instruction

    check_instruction(instruction)  # before anything is imported or opened
    progress = CliProgress(quiet=as_json)
    studio = open_studio(home=home, engine=engine, profile=profile or "z-image-turbo", scorer=scorer,
                         model_path=model_path, llm_url=llm_url, llm_model=llm_model, llm_timeout=llm_timeout,
                         llm_path=llm_path, config=config, comfy_url=comfy_url, comfy_file=comfy_file, device=device,
                         dtype=dtype, batch_size=batch_size, cpu_offload=cpu_offload)
    try:
        result = studio.edit(source, instruction, n=n, rounds=rounds, target=target, mask=mask, strength=strength,
                             profile=profile, seed=seed, progress=progress)
    finally:
        progress.stop()
        studio.close()
    if as_json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
        return
    out.print(Text(f"best edits of run {result.run_id} ({len(result.renders)} renders; {result.stop_reason})",
                   style="bold"), highlight=False)
    print_images([{"n": i, "score": f"{r.scores.composite:.3f} {r.scores.scorer}" if r.scores else "-", "seed": r.seed,
                   "id": r.id, "width": r.spec.width, "height": r.spec.height, "prompt": r.prompt, "path": r.path}
                  for i, r in enumerate(result.best, 1)])
    out.print(f"run id: {result.run_id}   (reverie show {result.run_id})", highlight=False)
