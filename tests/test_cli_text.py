"""Text the CLI did not write (ideas, error messages, paths) is printed verbatim: rich markup in
it, such as "[bold]x[/]" or "[1]", must not be eaten."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli

BRACKETS = "[bold]x[/] [1]"


def test_error_message_with_brackets_is_printed_verbatim(tmp_path):
    done = run_cli("make", "a fox", "--engine", "tiny", "--control", BRACKETS, home=tmp_path / "home")
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert f"--control {BRACKETS} needs a reference image" in errors[0]


def test_idea_with_brackets_is_shown_verbatim(home):
    idea = f"a fox {BRACKETS} in the rain"
    done = run_cli("make", idea, "--engine", "tiny", "--n", "1", "--rounds", "1", "--megapixels", "0.05",
                   "--seed", "1", "--json", home=home)
    assert done.returncode == 0, done.stderr
    run_id = json.loads(done.stdout)["run_id"]
    shown = run_cli("show", run_id, home=home)
    assert shown.returncode == 0, shown.stderr
    assert f"idea: {idea}" in shown.stdout
    listed = run_cli("runs", home=home)
    assert BRACKETS in listed.stdout


def test_make_table_prints_every_best_path_unbroken(home):
    """At 100 columns the result table leaves the paths out; each follows on one unbroken line."""
    long_home = home / ("a-rather-long-folder-name-" * 2)
    long_home.mkdir()
    (long_home / "models").symlink_to(home / "models", target_is_directory=True)
    done = run_cli("make", "a fox in the rain", "--engine", "tiny", "--n", "2", "--rounds", "1", "--megapixels", "0.02",
                   "--seed", "3", home=long_home, env={"COLUMNS": "100"})
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.split("run id:")[1].split()[0]
    shown = json.loads(run_cli("show", run_id, "--json", home=long_home).stdout)
    paths = {r["path"] for p in shown["prompts"] for r in p["renders"]}
    assert all(len(p) > 100 for p in paths)
    printed = [line.split()[-1] for line in done.stdout.splitlines() if "/images/" in line]
    assert len(printed) == 2 and set(printed) <= paths  # whole paths, one per line


def test_everything_fits_80_columns(tmp_path):
    """Full run ids in `runs`, score paths on unbroken lines, `models` without a collapsed column."""
    home = tmp_path / "home"
    made = run_cli("make", "a fox in the rain with a very long description that will not fit in a narrow column",
                   "--engine", "fixed", "--n", "2", "--rounds", "1", "--megapixels", "0.02", "--json", home=home)
    assert made.returncode == 0, made.stderr
    run_id = json.loads(made.stdout)["run_id"]
    narrow = {"COLUMNS": "80"}
    runs = run_cli("runs", home=home, env=narrow)
    assert run_id in runs.stdout and all(len(line) <= 80 for line in runs.stdout.splitlines())
    scored = run_cli("score", str(home / "images"), "--scorer", "heuristic", home=home, env=narrow)
    assert scored.returncode == 0, scored.stderr
    paths = [line.split()[-1] for line in scored.stdout.splitlines() if line.startswith("#")]
    assert len(paths) == 2 and all(Path(p).is_file() for p in paths)  # whole, copyable paths
    models = run_cli("models", home=home, env=narrow)
    assert models.returncode == 0 and all(len(line) <= 80 for line in models.stdout.splitlines())
    assert "z-image-turbo " in models.stdout
