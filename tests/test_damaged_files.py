"""Damaged files in a home, through the CLI as a user meets them: a corrupted PNG of a run and
garbage inside checkpoints.db are each named with what to do, and nothing else is lost."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.conftest import run_cli

MAKE = ["make", "a lighthouse at dusk", "--engine", "fixed", "--scorer", "heuristic", "--n", "3", "--rounds", "1",
        "--megapixels", "0.02", "--seed", "4"]


@pytest.fixture
def made(tmp_path) -> tuple[Path, str]:
    """A home with one finished run of three images (the fixed engine needs no weights)."""
    home = tmp_path / "home"
    done = run_cli(*MAKE, "--json", home=home)
    assert done.returncode == 0, done.stderr
    import json

    return home, json.loads(done.stdout)["run_id"]


def _runs(home: Path) -> list[tuple]:
    conn = sqlite3.connect(home / "reverie.db")
    try:
        return conn.execute("select id, status from runs order by created").fetchall()
    finally:
        conn.close()


def test_show_reports_a_damaged_png_and_goes_on(made):
    home, run_id = made
    conn = sqlite3.connect(home / "reverie.db")
    render_id, path = conn.execute("select id, path from renders where run_id = ? order by id", [run_id]).fetchone()
    conn.close()
    png = home / path
    png.write_bytes(png.read_bytes()[:100])  # cut short, as a full disk or a copy that stopped leaves it
    shown = run_cli("show", run_id, home=home)
    assert shown.returncode == 0, shown.stderr
    assert "Traceback" not in shown.stdout + shown.stderr
    damaged = [line for line in shown.stdout.splitlines() if line.startswith("damaged:")]
    assert len(damaged) == 1 and f"render {render_id}" in damaged[0] and path in shown.stdout.replace("\n", ""), shown.stdout
    assert "diversity" in shown.stdout and "images" in shown.stdout  # the rest of the report is still there


def test_garbage_in_checkpoints_db_is_named_before_any_run_row(made):
    home, _ = made
    checkpoints = home / "checkpoints.db"
    data = bytearray(checkpoints.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    assert len(data) >= 2 * page, "the checkpoint file has a second page to damage"
    data[page:2 * page] = bytes(range(256)) * (page // 256)  # page 2 overwritten; page 1 still reads
    checkpoints.write_bytes(bytes(data))
    before = _runs(home)
    done = run_cli("make", "a boat on a lake", *MAKE[2:], home=home)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr + done.stdout
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert str(checkpoints) in errors[0] and "mv " in errors[0], errors[0]
    assert _runs(home) == before  # no run row left unfinished by a make that could not start
    assert checkpoints.read_bytes() == bytes(data)  # the user's file is theirs to rescue
