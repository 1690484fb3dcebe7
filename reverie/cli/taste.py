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


@friendly
def taste(
    reset: bool = typer.Option(False, "--reset", help="Go back to the default weighting (learnt ones stay in the history)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    home: Optional[str] = HOME,
):
    """Learn your weighting of the score components from your picks and rejects, and use it from now on.

    It is adopted only when, on picks it was not fitted on (cross-validation), it orders your
    choices at least as well as the default weighting; every score records which weighting made it."""
    import json

    from reverie.config import resolve_home
    from reverie.scoring.taste import learn
    from reverie.store.db import Store

    store = Store(resolve_home(home))
    if reset:
        count = store.tastes.reset()
        message = "back to the default weighting" + (f" ({count} learnt weighting(s) set aside)" if count else " (it was in use)")
        if as_json:
            print(json.dumps({"reset": True, "was_active": count}))
        else:
            out.print(message, highlight=False)
        return
    fit = learn(store.picks.labelled())
    taste_id = None
    current = store.tastes.active().get(fit.family)
    if current is not None and current["weights"] == fit.weights:  # the same choices again: nothing new to adopt
        taste_id = current["id"]
    elif fit.better:
        taste_id = store.tastes.save(family=fit.family, weights=fit.weights, picks=fit.picks, rejects=fit.rejects,
                                     agreement=fit.agreement, default_agreement=fit.default_agreement)
    if as_json:
        print(json.dumps({**fit.to_dict(), "adopted": taste_id is not None, "taste_id": taste_id,
                          "weighting": f"taste {taste_id}" if taste_id else "default"}))
        return
    from rich.table import Table

    table = Table(title=f"taste from {fit.picks} picks and {fit.rejects} rejects ({fit.family} scores)")
    table.add_column("component")
    table.add_column("default", justify="right")
    table.add_column("learnt", justify="right")
    for name, share in fit.weights.items():
        table.add_row(name, f"{fit.default_weights[name]:.2f}", f"{share:.2f}")
    out.print(table)
    out.print(f"held-out agreement with your choices ({fit.folds}-fold, {fit.details['held_out_pairs']} pick/reject "
              f"pairs): learnt {fit.agreement:.0%}, default {fit.default_agreement:.0%}", highlight=False)
    if fit.ignored:
        out.print(f"{fit.ignored} choice(s) on images scored by another scorer were left out", highlight=False)
    if taste_id is not None:
        out.print(f"from now on runs score with taste {taste_id} (each score records it); "
                  f"`reverie taste --reset` goes back to the default", highlight=False)
    else:
        out.print("kept the default weighting: the learnt one orders your held-out choices worse; "
                  "pick and reject more images, then run `reverie taste` again", highlight=False)
