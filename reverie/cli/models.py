"""CLI commands for models (registered on the app in reverie.cli).

`reverie models` lists what can render and score and whether its weights are here;
`reverie models pull NAME` is the only command that downloads anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table
from rich.text import Text

from reverie.cli.common import err, friendly, out, path_text
from reverie.types import Event, ReverieError

models_app = typer.Typer(help="List model profiles and their weights; `pull` downloads one.", invoke_without_command=True)


def _scorer_models(home: Optional[str]) -> list:
    """The scoring package's models, with reverie.toml's [scoring] paths applied when there is one."""
    try:
        from reverie.scoring.weights import scorer_models
    except ImportError:
        return []
    from reverie.config import load_config

    table = load_config(home).get("scoring")
    return scorer_models(table)


def model_rows(home: Optional[str] = None) -> list[dict]:
    from reverie.config import resolve_home
    from reverie.profiles import EDITORS, PROFILES, plugin_problems, plugin_source
    from reverie.render.weights import downloadables, where

    models_dir = resolve_home(home) / "models"
    rows = []
    for item in downloadables():
        found = where(item, models_dir) if item.repo_id else None
        row = {"name": item.name, "kind": item.kind, "repo": item.repo_id, "present": found is not None,
               "where": found or item.note or "not downloaded", "gated": item.gated,
               "pull": f"reverie models pull {item.name}" if item.repo_id else None}
        if item.kind == "profile":
            p = PROFILES[item.name]
            row.update(family=p.family, pipeline=p.pipeline, steps=p.steps, guidance=p.guidance,
                       cfg=p.traits.cfg_scale(p.guidance), sampler=p.sampler, shift=p.shift,
                       prompt_style=p.prompt_style, negative=p.negative, source=p.source)
            editor = EDITORS.get(item.name)  # what `reverie edit` can do with it: instruction, img2img, or nothing
            row["edits"] = editor.kind if editor else None
            row["plugin"] = plugin_source(item.name)  # the installed package that added it; None: reverie's own
        rows.append(row)
    for line in plugin_problems():  # a broken family plugin, said where people look for their models
        rows.append({"name": line.split()[2], "kind": "family plugin", "repo": "", "present": False, "where": line})
    for m in _scorer_models(home):
        rows.append({"name": m.name, "kind": "scorer", "repo": "", "present": bool(m.present), "where": m.where,
                     "description": m.description})
    from reverie.scoring.plugins import built_ins, installed, plugin

    # The scorer registry: reverie's own components first (which scorer computes each), then plugins.
    for p in built_ins():
        rows.append({"name": p.name, "kind": "score component", "repo": "", "present": True,
                     "where": f"built in ({p.family} scorer)", "role": p.role, "weight": p.weight,
                     "quantiles": list(p.quantiles) if p.quantiles else None, "description": p.description})
    for entry in installed():
        if entry.built_in:
            continue
        p = plugin(entry)
        rows.append({"name": p.name, "kind": "scorer plugin", "repo": "", "present": True,
                     "where": f"{entry.distribution} ({entry.value})", "role": p.role, "weight": p.weight,
                     "description": p.description})
    for row in rows:
        if row["present"]:
            row.update(size_bytes=disk_size(row["where"]), source=source_of(row["where"], models_dir))
    return rows


def disk_size(where: str) -> Optional[int]:
    """Bytes on disk under a file or folder, each file once (a Hugging Face snapshot is symlinks to
    shared blobs); None when `where` is not a path (a plugin's distribution name)."""
    import os

    path = Path(where)
    if not path.exists():
        return None
    if path.is_file():
        return path.stat().st_size
    seen, total = set(), 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                st = os.stat(os.path.join(folder, name))  # follows the snapshot's links to the blobs
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def source_of(where: str, models_dir: Path) -> str:
    """Where present weights came from: the Hugging Face cache, this home's models folder, a
    ComfyUI models folder, or another local path."""
    path = Path(where)
    if not path.exists():
        return ""
    resolved = path.resolve()
    try:
        from huggingface_hub import constants

        if resolved.is_relative_to(Path(constants.HF_HUB_CACHE).resolve()) or "models--" in str(path):
            return "HF cache"
    except ImportError:
        pass
    if resolved.is_relative_to(models_dir.resolve()):
        return "reverie home"
    if any(part.lower() == "comfyui" for part in resolved.parts):
        return "ComfyUI folder"
    return "local path"


def human_size(size: Optional[int]) -> str:
    if size is None:
        return ""
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return ""


@models_app.callback()
@friendly
def models(
    ctx: typer.Context,
    home: Optional[str] = typer.Option(None, "--home"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    comfy_url: Optional[List[str]] = typer.Option(None, "--comfy-url", help="Say which profiles this ComfyUI server can render instead."),
    comfy_file: Optional[List[str]] = typer.Option(None, "--comfy-file", help="ComfyUI model file, KEY=NAME."),
):
    """List model profiles, control nets and scorers, and whether their weights are on this machine."""
    if ctx.invoked_subcommand is not None:
        return
    if comfy_url:
        return _comfy_models(comfy_url, comfy_file or [], as_json)
    rows = model_rows(home)
    if as_json:
        print(json.dumps(rows, ensure_ascii=False))
        return
    out.print(Text("models (`reverie models pull NAME` downloads one)", style="bold"), highlight=False)
    table = Table()
    table.add_column("name", no_wrap=True)
    # Short cells that never wrap; where each model lives is listed below, one unbroken path a line.
    for col in ("pipeline", "steps", "cfg", "sampler"):
        table.add_column(col, no_wrap=True)
    table.add_column("here", no_wrap=True)
    components = [r for r in rows if r["kind"] == "score component"]
    rows = [r for r in rows if r["kind"] != "score component"]
    for r in rows:
        table.add_row(r["name"], r.get("pipeline", "").replace("Pipeline", "").replace("StableDiffusion", "SD") or r["kind"], str(r.get("steps", "")),
                      str(r.get("guidance", "")), r.get("sampler", ""), "yes" if r["present"] else "no")
    out.print(table)
    # What `reverie edit` can use, below the table: a seventh column collapses the others at 80 columns.
    out.print(Text("score components (built in; plugins are rows above): " + ", ".join(
        f"{r['name']} ({r['where'].split('(')[1].split()[0]}, {r['weight']:g})" for r in components)), highlight=False)
    added = [f"{r['name']} (from {r['plugin']})" for r in rows if r.get("plugin")]
    if added:
        out.print(Text("family plugins: " + ", ".join(added)), soft_wrap=True, highlight=False)
    for r in rows:
        if r["kind"] == "family plugin":
            out.print(Text(r["where"]), soft_wrap=True, highlight=False)
    editors = [f"{r['name']} ({r['edits']})" for r in rows if r.get("edits")]
    if editors:
        out.print(Text("editors (`reverie edit`): " + ", ".join(editors)), highlight=False)
    found = [r for r in rows if r["present"]]
    if found:
        # Name, size and source on one line, the whole path on the next: a long path never pushes
        # the others past 80 columns, and it can be copied in one go.
        out.print("[bold]where[/] (size on disk, and where it came from)")
        for r in found:
            said = ", ".join(x for x in (human_size(r.get("size_bytes")), r.get("source")) if x)
            out.print(Text(f"{r['name']}" + (f" ({said})" if said else "")), highlight=False)
            out.print(Text("  ").append_text(path_text(r["where"])) if Path(r["where"]).exists()
                      else Text(f"  {r['where']}"), soft_wrap=True, highlight=False)
    gated = [r for r in rows if r.get("gated") and not r["present"]]
    if gated:
        # The page's address on a line of its own, whole, so a narrow terminal does not break it.
        out.print("gated: accept the licence on each page while logged in, then `hf auth login`", markup=False,
                  highlight=False)
        for r in gated:
            out.print(Text(f"{r['name']}:\n  https://huggingface.co/{r['repo']}"), soft_wrap=True, highlight=False)


@models_app.command("pull")
@friendly
def pull(
    name: str = typer.Argument(..., help="A profile (z-image-turbo), a control net (z-image-turbo-control), "
                                         "a preprocessor (depth, pose) or a scorer (clip-vit-l-14)."),
    home: Optional[str] = typer.Option(None, "--home"),
):
    """Download one model into the Hugging Face cache, with a progress bar."""
    from reverie.render.weights import check_online, downloadables, pull as pull_weights, rich_tqdm

    item = next((i for i in downloadables() if i.name == name), None)
    if item is not None and item.gated:  # said first: it is what a download without a login would fail on
        from reverie.render.weights import gated_line

        err.print(f"reverie: {gated_line(item.repo_id)}", markup=False, highlight=False, soft_wrap=True)
    check_online(name)
    renderers = [i.name for i in downloadables()]
    # The scorers' list imports torch; look at it only for a name that is not a render model.
    scorers = {} if name in renderers else {m.name: m for m in _scorer_models(home)}
    if name not in renderers and name not in scorers:
        raise ReverieError(f"unknown model {name!r}: use one of {', '.join(renderers + list(scorers))} (see `reverie models`)")
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                        TimeRemainingColumn(), console=err)
    with progress:
        if name in scorers:
            task = progress.add_task(name, total=None)

            def on_event(event: Event) -> None:
                if event.kind == "download_finished":
                    progress.update(task, total=1, completed=1)

            path = scorers[name].pull(on_event)
        else:
            from reverie.config import resolve_home

            path = pull_weights(name, tqdm_class=rich_tqdm(progress), models_dir=resolve_home(home) / "models")
    out.print(f"{name}: {path}", markup=False, highlight=False, soft_wrap=True)


def _comfy_models(urls: List[str], files: List[str], as_json: bool) -> None:
    """Per profile, whether each ComfyUI server can render it and what it lacks."""
    from reverie.cli.common import parse_comfy_files
    from reverie.render.comfyui import server_support

    rows = server_support(urls, parse_comfy_files(files))
    if as_json:
        print(json.dumps(rows, ensure_ascii=False))
        return
    servers = list(dict.fromkeys(f"{r['server']} ({r['version']})" for r in rows))
    pool = len(servers) > 1
    # Short cells only: what a server lacks is long (file names) and is listed below the table,
    # one unbroken line per profile, so a narrow terminal never folds a file name into pieces.
    table = Table(title="profiles on ComfyUI" + ("" if pool else f" at {servers[0]}"))
    for col in ("name", *(("server",) if pool else ()), "here", "dreamer"):
        table.add_column(col, no_wrap=True)
    for r in rows:
        server = (f"{r['server']} ({r['version']})",) if pool else ()
        table.add_row(r["profile"], *server, "yes" if r["ok"] else "no", "yes" if r["dreamer"] else "no")
    out.print(table)
    lacking = [r for r in rows if r["lacks"]]
    if lacking:
        out.print("[bold]what each lacks[/] (`--comfy-file KEY=NAME` renames a file)")
        for r in lacking:
            where = f" on {r['server']}" if pool else ""
            out.print(Text(f"{r['profile']}{where}: " + "; ".join(r["lacks"])), soft_wrap=True, highlight=False)
