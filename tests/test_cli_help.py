"""Help a person reads, and --version, through the real CLI."""

from __future__ import annotations

from importlib.metadata import version

from tests.conftest import run_cli


def test_version():
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"reverie {version('reverie')}"


def test_make_help_shows_readable_metavars_and_scorer():
    proc = run_cli("make", "--help", env={"COLUMNS": "120"})
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line.startswith("  --")}
    assert "--n" in rows and "--n N " in rows["--n"]
    assert not any(t in proc.stdout for t in ("<int>", "<str>", "<bool>", "<float>", "AS_JSON")), proc.stdout
    assert "<bool>" not in rows["--json"] and "AS_JSON" not in rows["--json"]
    assert "SECONDS" in rows["--llm-timeout"] and "--scorer" in rows
    assert proc.stdout.splitlines()[0] == "Usage: reverie make [OPTIONS] IDEA"


def test_every_usage_line_names_arguments_plainly():
    for command in ("make", "show", "lineage", "export", "score", "pick", "batch"):
        proc = run_cli(command, "--help")
        usage = proc.stdout.splitlines()[0]
        assert proc.returncode == 0 and usage.startswith(f"Usage: reverie {command} [OPTIONS]"), proc.stdout
        assert "{" not in usage and "}" not in usage, usage


def test_make_takes_scorer(home):
    proc = run_cli("make", "a fox", "--n", "1", "--rounds", "1", "--megapixels", "0.01", "--seed", "1",
                   "--scorer", "heuristic", "--json", home=home)
    assert proc.returncode == 0, proc.stderr


def test_make_batch_chat_and_serve_take_the_same_engine_and_llm_options():
    """One Studio builder (cli.common.open_studio) behind all four: an option added for one reaches
    them all (chat lacked the ComfyUI and device flags, serve --llm-path)."""
    shared = {"--profile", "--engine", "--scorer", "--home", "--model-path", "--llm-url", "--llm-model", "--llm-timeout",
              "--llm-path", "--config", "--comfy-url", "--comfy-file", "--device", "--dtype", "--batch-size", "--cpu-offload"}
    for command in ("make", "batch", "chat", "serve"):
        proc = run_cli(command, "--help", env={"COLUMNS": "200"})
        options = {line.split()[0] for line in proc.stdout.splitlines() if line.startswith("  --")}
        assert shared <= options, (command, sorted(shared - options))


def test_engine_flags_reach_chat_and_serve(home):
    for command in ("chat", "serve"):
        proc = run_cli(command, "--engine", "tiny", "--comfy-url", "http://127.0.0.1:9", home=home, input="")
        assert proc.returncode == 2, (command, proc.stderr)
        assert proc.stderr.strip() == ("error: --comfy-url and --comfy-file are for the ComfyUI engine: drop them or "
                                       "pass --engine comfyui, not tiny")
