"""Where reverie keeps its data, and the settings file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


def default_home() -> Path:
    """--home, else $REVERIE_HOME, else the platform's user data dir."""
    env = os.environ.get("REVERIE_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("reverie", appauthor=False))


def resolve_home(home: Optional[str | os.PathLike] = None) -> Path:
    return Path(home).expanduser() if home else default_home()
