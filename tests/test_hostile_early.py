"""Hostile input answered with one line before torch loads, through the real CLI entry point."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli

TORCH_MARK = "@@torch-loaded@@"
# The real CLI entry point, with an exit hook that says whether torch was ever imported.
WRAPPER = (
    "import atexit, sys\n"
    f"atexit.register(lambda: sys.stderr.write('{TORCH_MARK}' if 'torch' in sys.modules else ''))\n"
    "sys.argv = ['reverie', *sys.argv[1:]]\n"
    "from reverie.cli import main\n"
    "main()\n"
)


def run_light(*args: str, home: Path) -> tuple[subprocess.CompletedProcess, bool]:
    """(the finished process, whether torch was imported); stderr without the hook's mark."""
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    env.pop("OPENAI_BASE_URL", None)
    proc = subprocess.run([sys.executable, "-c", WRAPPER, *args, "--home", str(home)], capture_output=True,
                          text=True, timeout=300, env=env, cwd=REPO)
    loaded = TORCH_MARK in proc.stderr
    proc.stderr = proc.stderr.replace(TORCH_MARK, "")
    return proc, loaded


def assert_one_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def junk(tmp_path) -> Path:
    d = tmp_path / "junk"
    d.mkdir()
    (d / "notes.txt").write_text("not an image")
    (d / "empty").mkdir()
    (d / "fake.png").write_text("a text file named like a picture")
    os.mkfifo(d / "fifo")
    return d


@pytest.mark.parametrize("args, needles", [
    (["make", "a fox", "--seed", str(2**63)], ["seed", "from 0 to", "leave --seed out"]),
    (["make", "a fox", "--seed", str(2**64 + 5)], ["seed", "from 0 to"]),
    (["make", "a fox", "--seed", "-1"], ["seed -1 is out of range"]),
    (["make", "a fox", "--embed-noise", "0.9"], ["embedding noise must be between 0 and 0.5", "--embed-noise 0.1"]),
    (["make", "a fox", "--shift", "50"], ["shift must be between 0.5 and 20"]),
    (["make", "a fox", "--profile", "sdxl", "--shift", "6"], ["sdxl has none", "--blind-steps"]),
    (["make", "a fox", "--target", "5"], ["target", "between 0 and 1"]),
    (["make", "a fox", "--n", "-1"], ["n must be between 1"]),
    (["make", "a fox", "--ref", "{junk}"], ["is a folder"]),
    (["make", "a fox", "--ref", "{junk}/fifo"], ["not a regular file"]),
    (["lineage", "{junk}"], ["is a folder: give an image file"]),
    (["lineage", "/dev/zero"], ["/dev/zero is not a regular file"]),
    (["lineage", "{junk}/fifo"], ["not a regular file"]),
    (["score", "{junk}/notes.txt"], ["is a readable image"]),
    (["score", "{junk}/fake.png"], ["is a readable image"]),
    (["score", "{junk}/empty"], ["no images"]),
    (["score", "{junk}"], ["is a readable image"]),
    (["score", "/dev/zero"], ["not a regular file"]),
])
def test_hostile_input_is_one_line_before_torch(tmp_path, junk, args, needles):
    proc, torch_loaded = run_light(*[a.format(junk=junk) for a in args], home=tmp_path / "home")
    assert_one_line(proc, *needles)
    assert not torch_loaded


@pytest.mark.parametrize("line, needles", [
    ('{"idea": "a fox", "megapixels": "big"}', ['line 2', '"megapixels" must be a number']),
    ('{"idea": "a fox", "profile": ["sdxl"]}', ['line 2', '"profile" must be a string']),
    ('{"idea": "a fox", "n": "8"}', ['line 2', '"n" must be a positive whole number']),
    ('{"idea": "a fox", "strength": "x", "reference": "r.png"}', ['line 2', '"strength" must be a number']),
    ('{"idea": "a fox", "aspect": 1.5}', ['line 2', '"aspect" must be a string']),
])
def test_batch_fields_of_the_wrong_type(tmp_path, line, needles):
    file = tmp_path / "ideas.jsonl"
    file.write_text('{"idea": "a cat"}\n' + line + "\n")
    proc, torch_loaded = run_light("batch", str(file), home=tmp_path / "home")
    assert_one_line(proc, str(file), *needles)
    assert not torch_loaded


def test_export_with_a_missing_png_exports_the_others(home, tmp_path):
    from reverie.orchestrator.studio import Studio

    with Studio(home=home, engine="tiny") as studio:
        result = studio.make("a lighthouse at dusk", n=3, rounds=1, seed=3, megapixels=0.01)
    gone = Path(result.best[0].path)
    gone.unlink()
    proc = run_cli("export", result.run_id, str(tmp_path / "out"), "--top", "3", home=home)
    line = assert_one_line(proc, str(gone), "exported the other 2")
    assert "FileNotFoundError" not in line
    assert len(list((tmp_path / "out").glob("*.png"))) == 2


def test_damaged_checkpoint_file_names_the_file_and_the_fix(home):
    (home / "checkpoints.db").write_bytes(b"this is not a database at all, just text " * 100)
    proc = run_cli("make", "a fox", "--n", "1", "--rounds", "1", "--megapixels", "0.01", "--seed", "1", home=home)
    # Notices and the progress bar come first here; the error is one line, the last.
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(home / "checkpoints.db") in errors[0] and "move it aside" in errors[0]
    conn = sqlite3.connect(home / "reverie.db")
    try:  # the checkpoint opens before the run row: no run is left behind at all
        assert conn.execute("select count(*) from runs").fetchone()[0] == 0
    finally:
        conn.close()
