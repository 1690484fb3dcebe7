"""The content-pipeline example in examples/ runs as written."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_content_pipeline_example_runs():
    r = subprocess.run([sys.executable, str(REPO / "examples" / "content_pipeline.py")], capture_output=True, text=True,
                       timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "make: run" in r.stdout and "stream: done, 2 renders" in r.stdout
    assert r.stdout.count("batch: '") == 2 and "contact sheet" in r.stdout
    assert "chat turn 3: more like #2" in r.stdout
