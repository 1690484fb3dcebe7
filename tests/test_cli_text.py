"""Text the CLI did not write (ideas, error messages, paths) is printed verbatim: rich markup in
it, such as "[bold]x[/]" or "[1]", must not be eaten."""

from __future__ import annotations

import json
import re
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


def test_make_table_shows_size_and_prompt_and_show_names_the_machine_and_explains_scores(home):
    narrow = {"COLUMNS": "80"}
    done = run_cli("make", "a fox in the rain", "--engine", "tiny", "--n", "2", "--rounds", "1", "--megapixels", "0.02",
                   "--seed", "3", home=home, env=narrow)
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.split("run id:")[1].split()[0]
    made = json.loads(run_cli("show", run_id, "--json", home=home).stdout)
    renders = [r for p in made["prompts"] for r in p["renders"]]
    lines = done.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines if "/images/" not in line), done.stdout
    assert "size" in lines[2] and "prompt" in lines[2]
    rows = [line for line in lines if "A fox in the rain" in line]
    assert len(rows) == 2 and all(re.search(r"\b\d+x\d+\b", row) for row in rows)
    # A pipe gets the bare whole path: no OSC 8 escape codes in a log.
    assert "\x1b" not in done.stdout and sum(r["path"] in done.stdout for r in renders) == 2

    shown = run_cli("show", run_id, "--explain", home=home, env=narrow)
    assert shown.returncode == 0, shown.stderr
    assert "rendered on this machine (tiny engine on cpu): 2 images" in shown.stdout
    text = " ".join(shown.stdout.split())  # the explanations wrap at 80 columns
    assert "noise " in text and "freedom from grain and static" in text and "higher is better" in text


def test_a_terminal_gets_each_image_path_as_a_link(tmp_path):
    from rich.console import Console

    from reverie.cli.common import path_text

    image = tmp_path / "an image.png"
    console = Console(force_terminal=True, width=80)
    with console.capture() as captured:
        console.print(path_text(str(image)))
    assert "\x1b]8;id=" in captured.get() and image.as_uri() in captured.get() and str(image) in captured.get()


def test_runs_says_why_a_run_failed_in_one_line_at_80_columns(tmp_path):
    from reverie.store.db import Store
    from reverie.types import Request

    home = tmp_path / "home"
    store = Store(home)
    run_id = store.create_run(Request(idea="a fox"), "tiny", 1)
    reason = ("no image was rendered: CUDA out of memory while decoding the latents at 2048x2048; lower --megapixels "
              "or pass --cpu-offload so that the idle parts of the model wait in RAM")
    store.finish_run(run_id, "failed", reason)
    store.close()
    listed = run_cli("runs", home=home, env={"COLUMNS": "80"})
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), listed.stdout
    [why] = [line for line in lines if line.startswith(run_id)]
    assert "no image was rendered: CUDA out of memory" in why and why.endswith("…")
    rows = json.loads(run_cli("runs", "--json", home=home).stdout)
    assert rows[0]["stop_reason"] == reason
