"""Logs in <home>/logs/: the full story behind every one-line error, and the server's access lines.

The standard `logging` module, one rotated file per kind of process (cli.log, serve.log, mcp.log),
so two processes on one home never rotate the same file under each other. Every line passes the
redactor first: tokens given to this process and anything shaped like a credential never reach disk.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import threading
from pathlib import Path
from typing import Optional

LOGGER = "reverie"
MAX_BYTES = 2 * 1024 * 1024
BACKUPS = 3
FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"

# What a credential looks like wherever it turns up: a header, a query or form field, an API key.
PATTERNS = [
    re.compile(r"(?i)(bearer\s+)[^\s'\",]+"),
    re.compile(r"(?i)((?:api[_-]?key|token|password|secret|authorization)[\"']?\s*[=:]\s*[\"']?)[^\s'\",&}]+"),
    re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"),
    re.compile(r"\bhf_[A-Za-z0-9]{8,}"),
]
HIDDEN = "***"

_secrets: set[str] = set()
_lock = threading.Lock()
_files: dict[str, Path] = {}


def add_secret(value: Optional[str]) -> None:
    """A value (the server's token, an API key from the settings) that no log line may hold."""
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, HIDDEN)
    for pattern in PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + HIDDEN, text)
    return text


class RedactingFormatter(logging.Formatter):
    """Redacts the whole formatted record, traceback included (exception messages can quote URLs)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def log_file(home: str | os.PathLike, kind: str = "cli") -> Path:
    return Path(home) / "logs" / f"{kind}.log"


def open_log(home: str | os.PathLike, kind: str = "cli") -> Optional[Path]:
    """Send the `reverie` loggers to <home>/logs/<kind>.log (once per process and file); None when
    the home cannot hold a log (read-only, missing): logging never stops a command."""
    path = log_file(home, kind)
    key = os.path.abspath(path)
    with _lock:
        if key in _files:
            return _files[key]
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.handlers.RotatingFileHandler(path, maxBytes=MAX_BYTES, backupCount=BACKUPS,
                                                           encoding="utf-8", delay=False)
        except OSError:
            return None
        handler.setFormatter(RedactingFormatter(FORMAT))
        logger = logging.getLogger(LOGGER)
        logger.addHandler(handler)
        logger.propagate = False  # the file is the place; a library's root handler would print it on stderr too
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)
        _files[key] = path
        return path


def get(name: str) -> logging.Logger:
    """A logger under `reverie` (reverie.serve, reverie.mcp...)."""
    return logging.getLogger(f"{LOGGER}.{name}" if name else LOGGER)


def log_exception(home: Optional[str | os.PathLike], exc: BaseException, what: str, kind: str = "cli",
                  level: int = logging.ERROR) -> Optional[Path]:
    """Write exc's traceback to the home's log; the path to name in the one-line error, or None."""
    path = open_log(home, kind) if home is not None else None
    if path is None:
        return None
    get(kind).log(level, "%s", what, exc_info=(type(exc), exc, exc.__traceback__))
    return path
