"""Shared fixtures. Real parts only: real SQLite files, the real tiny diffusers pipeline."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Tests send SIGINT to the commands they start, as a terminal does. A shell script that starts
# pytest in the background (`cmd &`, nohup) leaves SIGINT ignored, and an ignored signal stays
# ignored across exec: every child would shrug off the Ctrl-C. Python's own handler here is reset
# to the default in each child, which then installs KeyboardInterrupt as a terminal's command would.
signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    """The tiny Z-Image weights, saved once per test session and shared by every test."""
    from reverie.render.tiny import ensure_tiny_weights

    d = tmp_path_factory.mktemp("models")
    ensure_tiny_weights(d)
    return d


@pytest.fixture
def home(tmp_path, tiny_models_dir) -> Path:
    """A fresh reverie home whose models/ already holds the tiny weights (linked, not copied)."""
    h = tmp_path / "home"
    h.mkdir()
    (h / "models").symlink_to(tiny_models_dir, target_is_directory=True)
    return h


@pytest.fixture(scope="session")
def tiny_engine(tiny_models_dir):
    """One warm tiny engine for tests that only need to render."""
    from reverie.render.tiny import TinyEngine

    engine = TinyEngine(models_dir=tiny_models_dir, batch_size=4)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def tiny_scoring(tmp_path_factory) -> dict:
    """A tiny random open_clip model and aesthetic MLP in real files: their [scoring] settings."""
    from reverie.scoring.tiny import write_tiny_scoring_weights

    return write_tiny_scoring_weights(tmp_path_factory.mktemp("scoring"))


def run_cli(*args: str, home: Path | None = None, env: dict | None = None, timeout: float = 300,
            input: str | None = None) -> subprocess.CompletedProcess:
    """Run the real `reverie` console script in a subprocess, as a user would."""
    exe = Path(sys.executable).with_name("reverie")
    cmd = [str(exe), *args]
    if home is not None:
        cmd += ["--home", str(home)]
    full_env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **(env or {})}
    full_env.pop("OPENAI_BASE_URL", None) if "OPENAI_BASE_URL" not in (env or {}) else None
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, input=input)
