"""Where reverie keeps its data, and the settings file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional


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
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:  # its message names the line: "... (at line 3, column 9)"
        raise ReverieError(f"config file {file} is not valid TOML: {e}; fix that line or move the file aside") from None
    except UnicodeDecodeError:
        raise ReverieError(f"config file {file} is not UTF-8 text: save it as UTF-8 or move it aside") from None
    except OSError as e:
        raise ReverieError(f"cannot read config file {file} ({e.strerror}): check its permissions") from None
    check_config(data, file)
    return data


# What each setting of the sections reverie reads must be: (check, what to write instead).
def _text(v: Any) -> bool:
    return isinstance(v, str)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _positive(v: Any) -> bool:
    return _number(v) and v > 0


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _numbers_table(v: Any) -> bool:
    return isinstance(v, dict) and all(_number(x) for x in v.values())


TEXT = (_text, 'a string in quotes, e.g. "..."')
SETTINGS: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "llm": {
        "base_url": (_text, 'a URL in quotes, e.g. "http://localhost:11434/v1"'),
        "model": (_text, 'a model name in quotes, e.g. "qwen3:8b"'),
        "api_key": TEXT,
        "timeout": (_positive, "a number of seconds, e.g. 60"),
        "retries": (_count, "a whole number of extra tries, e.g. 2"),
        "max_tokens": (_count, "a whole number of tokens, e.g. 1024 (0: reverie's bound per purpose)"),
        "backend": (_text, '"auto", "server", "encoder" or "off"'),
        "path": (_text, 'a model folder in quotes, e.g. "/models/Qwen3-8B"'),
        "unload": (lambda v: isinstance(v, bool), "true or false"),
    },
    "judge": {
        "vlm_url": (_text, 'a URL in quotes, e.g. "http://localhost:11434/v1"'),
        "vlm_model": (_text, 'a vision model name in quotes, e.g. "qwen2.5vl:7b"'),
        "vlm_api_key": TEXT,
        "vlm_timeout": (_positive, "a number of seconds, e.g. 120"),
        "top": (lambda v: _count(v) and v >= 2, "a whole number of candidates shown, 2 or more, e.g. 4"),
    },
    "loop": {
        # The loop's fourth variety knob starts renders on the base model (--handoff-steps), which loads
        # it beside the distilled one (Z-Image base: about 12 GB more in bf16); false keeps it off.
        "handoff": (lambda v: isinstance(v, bool), "true or false"),
    },
    "scoring": {
        "clip_model": TEXT, "clip_config": TEXT, "clip_weights": TEXT, "aesthetic_weights": TEXT, "device": TEXT,
        "pickscore": (lambda v: isinstance(v, str) or v is False, 'a folder in quotes, or "off"'),
        "weights": (_numbers_table, "a table of numbers, e.g. { faithfulness = 0.4, aesthetic = 0.35 }"),
        "batch_size": (lambda v: _count(v) and v > 0, "a whole number, e.g. 16"),
        "dedupe_threshold": (_number, "a number between -1 and 1, e.g. 0.95"),
    },
}


def check_config(data: dict, file: Path) -> None:
    """One line naming the key, the file and the type wanted, for the first setting of the wrong type.

    Sections reverie does not read are left alone (another tool, or a newer reverie, may use them),
    but a bare key at the top cannot be anybody's section.
    """
    from reverie.types import ReverieError

    for name, value in data.items():
        known = SETTINGS.get(name)
        if not isinstance(value, dict):
            where = f"[{name}] must be a section of settings" if known else f"{name} = {value!r} is outside any section"
            raise ReverieError(f"config file {file}: {where}; write settings under a header such as [llm] or [scoring]")
        if known is None:
            continue
        for key, setting in value.items():
            if key not in known:
                if name == "scoring":  # scoring_settings names the keys it knows itself
                    continue
                raise ReverieError(f"config file {file}: unknown setting {key!r} in [{name}]: use one of {', '.join(known)}")
            ok, wanted = known[key]
            if not ok(setting):
                raise ReverieError(f"config file {file}: [{name}] {key} = {_toml(setting)} must be {wanted}")


def _toml(value: Any) -> str:
    """A value as it was written in the file, near enough to find it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value + '"'
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)
