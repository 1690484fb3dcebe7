"""A full disk is one line that says so, and leaves no half-written model folder behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest

from reverie.render.tiny import TINY_DIR_NAME

from tests.conftest import run_cli


@pytest.fixture
def tiny_disk(tmp_path):
    """A 300 KB tmpfs: too small for the tiny weights. Needs root and mount (CI containers have both)."""
    where = tmp_path / "disk"
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(where)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()})")
    yield where
    subprocess.run(["umount", str(where)], check=False)


def test_a_full_disk_is_one_line_and_leaves_no_tmp_folder(tiny_disk):
    home = tiny_disk / "home"
    proc = run_cli("make", "a fox", "--n", "1", "--rounds", "1", home=home)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the disk is full: free some space"), proc.stderr
    assert "SafetensorError" not in proc.stderr and "Traceback" not in proc.stderr
    assert [p.name for p in (home / "models").iterdir()] == []  # no tiny-z-image-vN.tmp-PID left


def test_a_dead_writers_half_saved_model_folder_is_removed(home, tiny_models_dir, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(tiny_models_dir, models)
    (home / "models").unlink()
    (home / "models").symlink_to(models, target_is_directory=True)
    # A pid that is not running: a writer killed while saving the weights.
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = models / f"{TINY_DIR_NAME}.tmp-{dead.pid}"
    (leftover / "transformer").mkdir(parents=True)
    (leftover / "transformer" / "half.safetensors").write_bytes(uuid.uuid4().bytes)
    # The weights are there already; the leftover is cleaned when reverie next saves a model.
    shutil.rmtree(models / TINY_DIR_NAME)
    proc = run_cli("make", "a fox", "--n", "1", "--rounds", "1", home=home)
    assert proc.returncode == 0, proc.stderr
    assert not leftover.exists()
    assert sorted(p.name for p in models.iterdir() if p.name.startswith(TINY_DIR_NAME)) == [TINY_DIR_NAME]
