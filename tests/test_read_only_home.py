"""A home on a read-only disk (a mounted backup, another user's folder): the reading commands
work, the writing ones refuse in one line."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import run_cli

NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]


def _as_reader(*args: str) -> subprocess.CompletedProcess:
    """The real CLI as a user who cannot write the home (root writes anywhere, so root runs it as nobody)."""
    exe = str(Path(sys.executable).with_name("reverie"))
    prefix = NOBODY if os.geteuid() == 0 else []
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run([*prefix, exe, *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture
def read_only_home(home):
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot act as a user who may not write")
        probe = subprocess.run([*NOBODY, sys.executable, "-c", "import reverie"], capture_output=True)
        if probe.returncode != 0:
            pytest.skip("the test venv is not readable by user nobody, so the CLI cannot run as a non-writer")
    made = run_cli("make", "a fox", "--n", "2", "--rounds", "1", "--json", home=home)
    assert made.returncode == 0, made.stderr
    # A copy in a folder every user can enter (pytest's tmp dirs are private to their owner).
    root = Path(tempfile.mkdtemp(prefix="reverie-ro-"))
    copy = root / "home"
    shutil.copytree(home, copy, symlinks=True)
    for p in [root, *copy.rglob("*"), copy]:
        if not p.is_symlink():
            p.chmod(p.stat().st_mode & ~0o222 | stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
                    | (0o111 if p.is_dir() else 0))
    yield copy, json.loads(made.stdout)
    for p in [root, *root.rglob("*")]:
        if not p.is_symlink():
            p.chmod(p.stat().st_mode | stat.S_IWUSR)
    shutil.rmtree(root)


def test_runs_show_lineage_and_export_read_a_read_only_home(read_only_home, tmp_path):
    home, made = read_only_home
    runs = _as_reader("runs", "--json", "--home", str(home))
    assert runs.returncode == 0, runs.stderr
    assert [r["id"] for r in json.loads(runs.stdout)] == [made["run_id"]]
    show = _as_reader("show", made["run_id"], "--home", str(home))
    assert show.returncode == 0 and made["run_id"] in show.stdout, show.stderr
    lineage = _as_reader("lineage", str(made["best"][0]["id"]), "--json", "--home", str(home))
    assert lineage.returncode == 0, lineage.stderr
    assert json.loads(lineage.stdout)["run"]["id"] == made["run_id"]


def test_writing_commands_refuse_a_read_only_home_in_one_line(read_only_home):
    home, _ = read_only_home
    for args in (["make", "a fox", "--n", "1"], ["pick", "1"]):
        proc = _as_reader(*args, "--home", str(home))
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().startswith("error: cannot write to home") and "--home DIR" in proc.stderr
        assert "Traceback" not in proc.stderr
