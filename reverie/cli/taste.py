"""CLI commands for a person's choices (registered on the app in reverie.cli): `pick` and `reject`."""

from __future__ import annotations

from typing import Optional

import typer

from reverie.cli.common import HOME, friendly, out
from reverie.types import ReverieError


def _one_render(store, image: str) -> dict:
    from reverie.store.lineage import find_renders

    rows = find_renders(store, image)
    if not rows:
        raise ReverieError(f"no render matches {image!r} in {store.db_path}: give an image reverie made, "
                           f"a render id or a sha prefix (`reverie show RUN` lists them)")
    if len(rows) > 1:
        raise ReverieError(f"{image!r} matches {len(rows)} renders: give more characters of the hash")
    return rows[0]


def _choose(choice: str, images: list[str], note: Optional[str], home: Optional[str]) -> None:
    from reverie.config import resolve_home
    from reverie.store.db import Store

    store = Store(resolve_home(home))
    rows = [_one_render(store, image) for image in images]  # every one resolves before any is recorded
    for row in rows:
        if row["status"] != "ok":
            raise ReverieError(f"render {row['id']} failed ({row['error']}): there is no image to {choice}")
    for row in rows:
        store.picks.record(row["id"], choice, source="cli", note=note)
        out.print(f"{choice}ed render {row['id']} (run {row['run_id']}, seed {row['seed']})", highlight=False)


@friendly
def pick(
    images: list[str] = typer.Argument(..., help="Images reverie made: files, render ids or sha prefixes."),
    note: Optional[str] = typer.Option(None, "--note", help="Why, in a few words (kept with the choice)."),
    home: Optional[str] = HOME,
):
    """Mark images you like: `reverie taste` learns your weighting from picks and rejects."""
    _choose("pick", images, note, home)


@friendly
def reject(
    images: list[str] = typer.Argument(..., help="Images reverie made: files, render ids or sha prefixes."),
    note: Optional[str] = typer.Option(None, "--note", help="Why, in a few words (kept with the choice)."),
    home: Optional[str] = HOME,
):
    """Mark images you do not like (a reject after a pick takes the pick back)."""
    _choose("reject", images, note, home)
