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
    local: bool = typer.Option(False, "--local", help="Run in this process even when `reverie serve` runs for this home."),
):
    """Edit an image: n candidates per round from the source, scored, the best kept."""
    from reverie.orchestrator.edit import check_instruction

    check_instruction(instruction)  # before anything is imported or opened
    progress = CliProgress(quiet=as_json)
    # edit_request's options: the warm server gets them as they are, so a new one travels.
    options = dict(n=n, rounds=rounds, target=target, strength=strength, profile=profile, seed=seed)
    own = {"--engine": engine != "auto", "--scorer": scorer != "auto", "--model-path": model_path, "--llm-url": llm_url,
           "--llm-model": llm_model, "--llm-timeout": llm_timeout, "--llm-path": llm_path, "--config": config,
           "--comfy-url": comfy_url, "--comfy-file": comfy_file, "--device": device, "--dtype": dtype,
           "--batch-size": batch_size, "--cpu-offload": cpu_offload}
    from reverie.cli.remote import handing_server

    server = handing_server(home, local, own)
    if server is not None:
        return edit_remote(server, progress, as_json, source=source, instruction=instruction, mask=mask,
                           options=options, home=home)
    studio = open_studio(home=home, engine=engine, profile=profile or "z-image-turbo", scorer=scorer,
                         model_path=model_path, llm_url=llm_url, llm_model=llm_model, llm_timeout=llm_timeout,
                         llm_path=llm_path, config=config, comfy_url=comfy_url, comfy_file=comfy_file, device=device,
                         dtype=dtype, batch_size=batch_size, cpu_offload=cpu_offload)
    try:
        result = studio.edit(source, instruction, mask=mask, progress=progress, **options)
    finally:
        progress.stop()
        studio.close()
    print_edited(result.to_dict(), [r.scores.scorer if r.scores else None for r in result.best], as_json)


def edit_remote(server, progress: CliProgress, as_json: bool, *, source: str, instruction: str, mask: Optional[str],
                options: dict, home: Optional[str]) -> None:
    """The edit on the warm server: the source and mask travel as bytes (an image of the home as the
    file it is), never as a path the server would open."""
    import os

    from reverie.cli.remote import home_of, image_bytes, remote_run, run_remote

    if os.path.isfile(source):
        sent = image_bytes(source, "source image")
    else:  # a render id or sha prefix of this home (the file it names, read here), or the in-process error
        from reverie.config import resolve_home
        from reverie.orchestrator.edit import resolve_source
        from reverie.store.db import Store

        store = Store(resolve_home(home), read_only_ok=True)
        try:
            sent = {**image_bytes(resolve_source(store, source)[0], "source image"), "name": source}
        finally:
            store.close()
    body = {"instruction": instruction, "source": sent, "mask": image_bytes(mask, "mask") if mask else None,
            "options": options, "home": home_of(home)}
    print_edited(*run_remote(server, progress, as_json,
                             lambda on_request: remote_run(server, "/api/cli/edit", body, progress, on_request)),
                 as_json)


def print_edited(made: dict, scorers: list, as_json: bool) -> None:
    """edit's answer, the same whether this process or the warm server ran it."""
    if as_json:
        print(json.dumps(made, ensure_ascii=False))
        return
    out.print(Text(f"best edits of run {made['run_id']} ({made['renders']} renders; {made['stop_reason']})",
                   style="bold"), highlight=False)
    print_images([{"n": i, "score": f"{r['scores']['composite']:.3f} {scorer or ''}".strip() if r["scores"] else "-",
                   "seed": r["seed"], "id": r["id"], "width": r.get("width"), "height": r.get("height"),
                   "prompt": r.get("prompt"), "path": r["path"]}
                  for i, (r, scorer) in enumerate(zip(made["best"], scorers + [None] * len(made["best"])), 1)])
    out.print(f"run id: {made['run_id']}   (reverie show {made['run_id']})", highlight=False)
