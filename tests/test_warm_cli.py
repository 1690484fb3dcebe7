"""The CLI over the warm server: `reverie make` hands its run to the `reverie serve` of its home,
imports no torch doing so, and answers as in-process make does; serve --detach/--status/--stop;
--keep-alive frees the model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import run_cli
from tests.serve_helpers import free_port, wait_until

HEAVY = ("torch", "diffusers", "transformers", "open_clip", "numpy")


def client(*args: str, home) -> subprocess.CompletedProcess:
    """`reverie ARGS` with -X importtime: stderr lists every module the client process imported."""
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-X", "importtime", "-m", "reverie", *args, "--home", str(home)],
                          capture_output=True, text=True, timeout=600, env=env)


def imported(stderr: str) -> set[str]:
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def test_make_hands_its_run_to_the_warm_server_without_importing_torch(home):
    port = free_port()
    started = run_cli("serve", "--engine", "tiny", "--scorer", "heuristic", "--port", str(port), "--detach",
                      "--keep-alive", "1", home=home)
    assert started.returncode == 0, started.stderr
    try:
        assert json.loads((home / "serve.json").read_text())["url"].endswith(f":{port}")
        status = run_cli("serve", "--status", home=home)
        assert status.returncode == 0 and f":{port}" in status.stdout

        made = client("make", "a fox in the rain", "--n", "2", "--rounds", "1", "--megapixels", "0.02", "--json",
                      home=home)
        assert made.returncode == 0, made.stderr[-2000:]
        assert not imported(made.stderr) & set(HEAVY), imported(made.stderr) & set(HEAVY)
        result = json.loads(made.stdout)
        assert set(result) == {"run_id", "home", "stop_reason", "renders", "best", "notices"}  # make --json's shape
        assert len(result["best"]) == 2 and all(os.path.isfile(b["path"]) for b in result["best"])
        assert result["home"] == str(home.resolve())

        # Bad input is the same one line and exit code as in-process.
        bad = client("make", "a fox", "--n", "0", home=home)
        assert bad.returncode == 2 and "error:" in bad.stderr

        # Idle past --keep-alive: the server freed the model (and says so in its log).
        wait_until(lambda: "freed the model" in (home / "logs" / "serve.log").read_text(), timeout=60,
                   what="the keep-alive to free the model")
    finally:
        stopped = run_cli("serve", "--stop", home=home)
    assert stopped.returncode == 0, stopped.stderr
    assert not (home / "serve.json").exists()  # the server cleaned up after itself
    assert run_cli("serve", "--status", home=home).returncode == 1


def test_local_runs_in_this_process_and_no_server_means_in_process(home):
    local = run_cli("make", "a fox", "--n", "1", "--rounds", "1", "--megapixels", "0.02", "--engine", "tiny",
                    "--scorer", "heuristic", "--json", home=home)
    assert local.returncode == 0, local.stderr
    assert "handing the run" not in local.stderr
