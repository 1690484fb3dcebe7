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


CONFIG_NAME = "reverie.toml"


def load_config(home: Optional[str | os.PathLike] = None, path: Optional[str | os.PathLike] = None) -> dict:
    """The settings file: --config PATH, else reverie.toml in the home; {} when there is none."""
    import tomllib

    from reverie.types import ReverieError

    if path is not None:
        file = Path(path).expanduser()
        if not file.is_file():
            raise ReverieError(f"config file {file} does not exist: pass an existing --config PATH")
    else:
        file = resolve_home(home) / CONFIG_NAME
        if not file.is_file():
            return {}
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ReverieError(f"config file {file} is not valid TOML ({e}): fix it or move it aside") from None
