"""CLI commands for scoring (registered on the app in reverie.cli)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, List, Optional

import typer
from rich.table import Table

from reverie.cli.common import err, friendly, out, print_paths, say
from reverie.types import ReverieError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
CHUNK = 64  # images held in memory at once; the scorer batches within a chunk


def is_sidecar(f: Path) -> bool:
    """A metadata file beside an image of the same name (`reverie export`'s X.json beside X.png, a
    caption's X.txt): part of the image, not a file that failed to be one."""
    return f.suffix.lower() not in IMAGE_SUFFIXES and any(f.with_suffix(s).is_file() or f.with_suffix(s.upper()).is_file()
                                                          for s in IMAGE_SUFFIXES)


def collect_images(paths: List[str]) -> tuple[list[Path], int]:
    """Image files named or found (recursively) under the paths, and how many others were skipped
    (sidecars beside their images are neither)."""
    files: list[Path] = []
    skipped = 0
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            for f in sorted(x for x in p.rglob("*") if x.is_file()):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    files.append(f)
                elif not is_sidecar(f):
                    skipped += 1
        elif p.is_file():
            files.append(p)
        elif p.exists():  # a device or a pipe: reading one may never end
            raise ReverieError(f"{raw} is not a regular file (a device or a pipe): pass image files or folders")
        else:
            raise ReverieError(f"{raw} does not exist: pass image files or folders that hold them")
    return files, skipped


def is_image(path: Path) -> bool:
    """Whether Pillow recognises the file's header; the pixels are not decoded."""
    from PIL import Image

    try:
        with Image.open(path):
            return True
    except Exception:  # any unreadable file is simply not an image here
        return False


def png_prompt(path: Path) -> str:
    """The positive prompt from an A1111-style `parameters` chunk (reverie, A1111, Forge...)."""
    from reverie.store.pngmeta import read_metadata

    try:
        parameters = read_metadata(path).get("parameters") or ""
    except Exception:
        return ""
    lines = []
    for line in parameters.splitlines():
        if line.startswith("Negative prompt:") or line.startswith("Steps:"):
            break
        lines.append(line)
    return "\n".join(lines).strip()


def load_chunks(files: list[Path]) -> Iterator[tuple[list[Path], list, int]]:
    """(paths, RGB images, unreadable count) for each chunk of files."""
    from PIL import Image, UnidentifiedImageError

    for start in range(0, len(files), CHUNK):
        paths, images, bad = [], [], 0
        for f in files[start:start + CHUNK]:
            try:
                with Image.open(f) as im:
                    images.append(im.convert("RGB"))
                paths.append(f)
            except (UnidentifiedImageError, OSError, ValueError):
                bad += 1
        yield paths, images, bad


def home_tastes(home: Optional[str]):
    """The weightings `reverie taste` learnt in the home, if it has a database (none is created)."""
    from reverie.config import resolve_home

    where = resolve_home(home)
    if not (where / "reverie.db").is_file():
        return None
    from reverie.scoring.taste import tastes_from
    from reverie.store.db import Store

    store = Store(where, read_only_ok=True)
    try:
        return tastes_from(store.tastes.active()) or None
    finally:
        store.close()


@friendly
def score(
    paths: List[str] = typer.Argument(..., help="Image files or folders (searched recursively for png/jpg/webp)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Text to compare with; default: each PNG's own prompt."),
    scorer: str = typer.Option("auto", "--scorer", help="auto, heuristic or clip."),
    top: Optional[int] = typer.Option(None, "--top", help="Show only the best N."),
    home: Optional[str] = typer.Option(None, "--home", help="Data folder whose reverie.toml holds the scoring settings."),
    taste: bool = typer.Option(True, "--taste/--no-taste", help="Rank with the weighting `reverie taste` learnt in this home (default when there is one)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
):
    """Score images and rank them best first, e.g. a ComfyUI output folder."""
    from reverie.config import load_config
    from reverie.scoring.dedupe import near_duplicates
    from reverie.scoring.scorer import make_scorer

    table_cfg = load_config(home).get("scoring", {})
    files, skipped = collect_images(paths)
    if not files:
        raise ReverieError(f"no images (png, jpg, webp) found in {', '.join(paths)}: pass image files or a folder of them")
    if not any(is_image(f) for f in files):  # before the scorer loads: nothing to score is one line
        raise ReverieError(f"none of the {len(files)} file(s) in {', '.join(paths)} is a readable image: "
                           "pass PNG, JPEG or WebP files or a folder of them")
    engine = make_scorer(scorer, table=table_cfg, tastes=home_tastes(home) if taste else None)
    if engine.honest_note:
        say(err, "reverie:", engine.honest_note)
    rows = []
    try:
        for chunk_paths, images, bad in load_chunks(files):
            skipped += bad
            texts = [prompt if prompt is not None else png_prompt(p) for p in chunk_paths]
            for p, text, s in zip(chunk_paths, texts, engine.score(images, texts, texts) if images else []):
                rows.append({"path": str(p), "prompt": text, "scores": s})
    finally:
        engine.close()
    rows.sort(key=lambda r: (-r["scores"].composite, r["path"]))
    dupes = near_duplicates([r["scores"].embedding for r in rows], engine.dedupe_threshold)
    shown = rows[:top] if top else rows
    if as_json:
        print(json.dumps({
            "scorer": engine.name, "weighting": engine.weighting, "note": engine.honest_note, "skipped": skipped,
            "images": [{"rank": i, "path": r["path"], "composite": r["scores"].composite, "scores": r["scores"].values,
                        "prompt": r["prompt"], "near_duplicate_of": dupes[i - 1] + 1 if i - 1 in dupes else None}
                       for i, r in enumerate(shown, 1)],
        }, ensure_ascii=False))
        return
    names = list(dict.fromkeys(k for r in shown for k in r["scores"].values))
    weighting = "" if engine.weighting == "default" else f", your {engine.weighting} weighting"
    table = Table(title=f"{len(rows)} images ranked by {engine.name}{weighting}")
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("", no_wrap=True)  # near-duplicate marks; the paths are listed below, unbroken
    for i, r in enumerate(shown, 1):
        values = r["scores"].values
        note = f"dup of #{dupes[i - 1] + 1}" if i - 1 in dupes else ""
        table.add_row(str(i), f"{r['scores'].composite:.3f}", *[f"{values[n]:.3f}" if n in values else "-" for n in names],
                      note)
    out.print(table)
    print_paths([(f"#{i}", r["path"]) for i, r in enumerate(shown, 1)])
    if skipped:
        err.print(f"skipped {skipped} file(s) that are not readable images", highlight=False)
