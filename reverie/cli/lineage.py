"""CLI commands for lineage (registered on the app in reverie.cli):
`lineage`, `reproduce` and `export`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from reverie.cli.common import MODEL_PATH, err, friendly, out
from reverie.types import RenderSpec, ReverieError


def _store(home: Optional[str]):
    from reverie.config import resolve_home
    from reverie.store.db import Store

    return Store(resolve_home(home), read_only_ok=True)  # lineage and export only read


def _describe_file(path: str) -> dict:
    """What an image file says about itself when no database row knows it."""
    from reverie.store.importers import import_metadata
    from reverie.store.lineage import image_chunks

    chunks = image_chunks(path)
    if chunks.get("reverie"):
        meta = json.loads(chunks["reverie"])
        return {"origin": "reverie", "note": f"made by reverie in another home (run {meta.get('run_id')}); from its own metadata",
                "spec": meta.get("spec"), "meta": meta}
    recipe = import_metadata(chunks)
    if recipe is None:
        raise ReverieError(f"{path} carries no reverie, A1111 `parameters` or ComfyUI `prompt` metadata: nothing to trace")
    tool = {"a1111": "A1111 `parameters`", "comfyui": "ComfyUI `prompt` workflow"}[recipe.source]
    return {"origin": recipe.source, "note": f"foreign image: not made by reverie; recipe read from its {tool} (model guessed from {recipe.model or 'nothing'!r})",
            "spec": recipe.spec.to_dict(), "model": recipe.model, "extra": recipe.extra}


@friendly
def lineage(
    image_or_id: str = typer.Argument(..., help="A render id, an image file, or a sha256/spec-hash prefix."),
    home: Optional[str] = typer.Option(None, "--home"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
):
    """How one image came to be: idea, expansions, critic revisions, spec, image, scores."""
    from reverie.store.lineage import find_renders, lineage as build

    store = _store(home)
    rows = find_renders(store, image_or_id)
    if not rows:
        if Path(image_or_id).is_file():
            info = _describe_file(image_or_id)
            if as_json:
                print(json.dumps(info, ensure_ascii=False, default=str))
                return
            out.print(f"[bold]{escape(info['note'])}[/]", highlight=False)
            out.print(json.dumps(info["spec"], indent=2, ensure_ascii=False), markup=False, highlight=False)
            return
        raise ReverieError(f"no render matches {image_or_id!r} in {store.db_path}: `reverie runs` lists the runs")
    if len(rows) > 1:
        raise ReverieError(f"{image_or_id!r} matches {len(rows)} renders: give more characters of the hash")
    info = build(store, rows[0])
    if as_json:
        print(json.dumps(info, ensure_ascii=False, default=str))
        return
    _print_lineage(info)


KEY_WIDTH = 11  # the widest key, "asked by" / "expansion", plus room


def _step(key: str, *lines: str) -> None:
    """One step of a lineage: the key in a fixed column, its lines wrapping beside it (indented)."""
    from rich.table import Table
    from rich.text import Text

    grid = Table.grid(padding=(0, 1))
    grid.add_column(width=KEY_WIDTH, no_wrap=True, style="bold")
    grid.add_column(ratio=1, overflow="fold")
    grid.add_row(key, Text("\n".join(line for line in lines if line)))
    out.print(grid, highlight=False)


def _print_lineage(info: dict) -> None:
    """idea -> (asked by) -> expansions and revisions -> spec -> image -> scores, one step each."""
    from rich.text import Text

    run, r = info["run"], info["render"]
    _step("idea", run["idea"], f"run {run['id']}, profile {run['profile']}, engine {run['engine']}")
    c = info["caused_by"]
    if c:
        what = (f"chat turn {c.get('turn')} of session {c.get('session')!r}: {c.get('message')}" if c["kind"] == "chat_turn"
                else f"batch {c.get('batch_id')} item {c.get('idx')}: {c.get('idea')}")
        _step("asked by", what)
    for p in info["prompts"]:
        critic = p["source"] == "critic"
        made_by = f"model {p['model']}, system prompt {p['system_hash'][:12]}" if p["model"] else ""
        reason = ("critic: " if critic else "reading: ") + p["reason"] if p["reason"] else ""
        _step("revision" if critic else "expansion",
              f"prompt {p['id']}, round {p['round']}, source {p['source']}", made_by, reason, p["text"])
    if info.get("edit"):
        _print_edit_chain(info["edit"])
    s = info["spec"]
    _step("spec", f"{info['spec_sha'][:16]}, seed {s['seed']}, {s['width']}x{s['height']}, steps {s['steps']}, "
                  f"guidance {s['guidance']}, sampler {s['sampler']}, shift {s['shift']}, blind steps {s['blind_steps']}"
                  + (f", first {s['handoff_steps']} step(s) on the base model" if s.get("handoff_steps") else ""))
    state = "ok" if r["file_ok"] else ("FILE MISSING OR CHANGED" if r["status"] == "ok" else f"{r['status']}: {r['error']}")
    made = f"engine {r['engine']}" + (f" on {r['worker']}" if r.get("worker") else "")
    _step("image", f"render {r['id']}, round {r['round']}, seed {r['seed']}, {state}", made)
    if r["path"]:
        # Its own unbroken line, whatever the width, so it can be copied whole.
        out.print(Text(f"{'':{KEY_WIDTH}} {r['path']}"), soft_wrap=True, highlight=False)
    sc = info["scores"]
    if sc:
        from reverie.scoring.composite import HELD_OUT_PREFIX
        from reverie.scoring.display import held_out_judges

        parts = ", ".join(f"{k} {v:.3f}" for k, v in sc.items() if k not in ("composite", "scorer")
                          and not k.startswith(HELD_OUT_PREFIX))
        weighting = info.get("weighting") or "default"
        weighed = f", {weighting} weighting" + (" (learnt from your picks: `reverie taste`)" if weighting != "default" else "")
        _step("scores", f"composite {sc['composite']:.3f} by the {sc['scorer']} scorer{weighed}", parts,
              *held_out_judges(sc))


def _print_edit_chain(edit: dict) -> None:
    """source, then each edit, then this one: the image parents from the first to this render's own."""
    for i, parent in enumerate(edit["chain"]):
        if parent["origin"] == "file":
            _step("source", f"a file from outside, sha256 {parent['sha256'][:16]}")
        elif parent.get("instruction"):
            _step("edited", f"render {parent['render_id']} (run {parent['run_id']}): {parent['instruction']!r}")
        else:
            _step("source" if i == 0 else "edited", f"render {parent['render_id']} (run {parent['run_id']}), "
                                                    f"sha256 {parent['sha256'][:16]}")
    _step("edit", f"instruction {edit['instruction']!r}, from "
                  + (f"render {edit['source_render_id']}" if edit["source_render_id"] is not None
                     else f"file {edit['source_sha'][:16]}"))


@friendly
def reproduce(
    image: str = typer.Argument(..., help="A PNG made by reverie (or A1111 / ComfyUI)."),
    engine: Optional[str] = typer.Option(None, "--engine", help="tiny or diffusers (default: the one that made it)."),
    home: Optional[str] = typer.Option(None, "--home", help="Where the tiny weights live (its models/ folder)."),
    model_path: Optional[str] = MODEL_PATH,
    save: Optional[str] = typer.Option(None, "--out", help="Also save the new render to this PNG path."),
):
    """Render an image again from its own metadata alone and say whether the pixels match."""
    from reverie.config import resolve_home
    from reverie.orchestrator.reproduce import reproduce as render_again
    from reverie.render.registry import make_engine

    info = _describe_file(image)
    spec = RenderSpec.from_dict(info["spec"])
    if info["origin"] != "reverie":
        err.print(f"reverie: {info['note']}; another program's pixels cannot be expected to match", markup=False, highlight=False)
    name = engine or (info["meta"].get("engine") if info["origin"] == "reverie" else "diffusers")
    if name not in ("tiny", "diffusers"):
        raise ReverieError(f"reproduce runs on the tiny or diffusers engine, not {name!r}: pass --engine tiny or --engine diffusers")
    if spec.source is not None:  # an edit: its source (and mask) must still be here
        for path, sha, what in ((spec.source.image_path, spec.source.image_sha, "source image"),
                                (spec.source.mask_path, spec.source.mask_sha, "mask")):
            if path and not Path(path).is_file():
                raise ReverieError(f"the edit's {what} {path} (sha256 {sha[:16]}) is gone: put that file back "
                                   f"to reproduce this edit")
    if spec.model_files and name == "diffusers" and not model_path:
        chosen = " ".join(f"{role}={file}" for role, file in spec.model_files)
        raise ReverieError(f"this image was made with other model files than {spec.profile}'s ({chosen}): pass "
                           f"--model-path to the same weights, or the profile's own would render something else")
    if spec.control is not None and not Path(spec.control.image_path).is_file():
        raise ReverieError(f"the control image {spec.control.image_path} is not on this machine: copy it there to reproduce")
    # Pixels depend on how many seeds shared the forward pass: the recorded batch size is re-created.
    batch_size = info.get("meta", {}).get("batch_size") or None
    if name == "tiny":
        from reverie.profiles import DEFAULT_PROFILE, PROFILES

        # The tiny model of the family that made it (an unknown profile: the default tiny Z-Image).
        tiny_profile = spec.profile if spec.profile in PROFILES else DEFAULT_PROFILE
        runner = make_engine("tiny", models_dir=str(resolve_home(home) / "models"), profile=tiny_profile,
                             batch_size=batch_size)
    else:
        runner = make_engine("diffusers", profile=spec.profile, model_path=model_path, batch_size=batch_size)
    try:
        compared = render_again(runner.render, spec, batch_size=batch_size, original=image)
    finally:
        runner.close()
    if save:
        compared.image.save(save)
    if compared.max_diff is None:
        out.print(f"mismatch: {compared.message}")
        raise typer.Exit(1)
    if compared.match:
        out.print(f"match: pixels identical (seed {spec.seed}, {spec.width}x{spec.height}, {name} engine, batch {runner.batch_size})",
                  highlight=False)
        return
    out.print(f"mismatch: max pixel difference {compared.max_diff} (mean {compared.mean_diff:.3f}) on the {name} engine",
              highlight=False)
    raise typer.Exit(1)


@friendly
def export(
    run_id: str = typer.Argument(..., help="A run id (a unique prefix is enough)."),
    directory: str = typer.Argument(..., help="Folder to copy the images into (created if needed)."),
    top: int = typer.Option(4, "--top", help="How many images to copy."),
    home: Optional[str] = typer.Option(None, "--home"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Copy a run's best images (diverse where possible) with their metadata and a JSON sidecar each."""
    from reverie.store.lineage import lineage as build

    if top < 1:
        raise ReverieError(f"--top must be at least 1 (got {top})")
    store = _store(home)
    run = store.get_run(run_id)
    from reverie.orchestrator.curation import home_best

    picked = home_best(store, run["id"], top, fill=True)  # the near-duplicates fill up to --top
    if not picked:
        raise ReverieError(f"run {run['id']} has no scored images yet: run it (the same `reverie make` command continues it)")
    target = Path(directory).expanduser()
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReverieError(f"cannot create {target} ({e.strerror or e}): pass a writable folder") from None
    rows = {r["id"]: r for r in store.render_rows(run["id"])}
    written, missing = [], []
    for rank, r in enumerate(picked, 1):
        # Names come from rank and content hash, never from prompt text.
        stem = f"{rank:02d}-{r.sha256[:16]}"
        try:
            shutil.copyfile(r.path, target / f"{stem}.png")
        except FileNotFoundError:  # deleted by hand: the others are still worth exporting
            missing.append(r.path)
            continue
        sidecar = {"rank": rank, **build(store, rows[r.id])}
        (target / f"{stem}.json").write_text(json.dumps(sidecar, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
        written.append({"rank": rank, "path": str(target / f"{stem}.png"), "render_id": r.id,
                        "composite": r.scores.composite if r.scores else None})
    if as_json:
        print(json.dumps({"run_id": run["id"], "dir": str(target), "images": written, "missing": missing}))
    else:
        for w in written:
            out.print(f"{w['rank']:>2}  {w['composite']:.3f}  {w['path']}", markup=False, highlight=False)
    if missing:
        raise ReverieError(f"{len(missing)} image file(s) are missing, e.g. {missing[0]}; exported the other {len(written)} to {target}: "
                           "restore the missing file from a backup, or lower --top")
