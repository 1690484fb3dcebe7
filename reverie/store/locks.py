"""Who owns a run: an advisory lock (flock) on `locks/run-<id>.lock`.

The kernel drops the lock when the process dies, however it dies, so a SIGKILLed run is free to
be resumed at once and a live one is never resumed twice (no pid-reuse guesswork).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Optional

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are still resumable, just unguarded
    fcntl = None  # type: ignore[assignment]


class RunLock:
    """An exclusive, non-blocking advisory lock on one run id, released when the process ends."""

    def __init__(self, home: Path, run_id: str):
        self.path = Path(home) / "locks" / f"run-{run_id}.lock"
        self._fd: Optional[int] = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return True

    def owner_pid(self) -> Optional[int]:
        """The pid its holder wrote into the lock file (None if unreadable)."""
        try:
            text = self.path.read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def held_elsewhere(self) -> bool:
        """True when another live process holds this run."""
        if fcntl is None or not self.path.exists():
            return False
        fd = os.open(self.path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)  # closing drops the probe lock
        return False

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@contextlib.contextmanager
def home_lock(home: Path, name: str):
    """A blocking exclusive lock on `locks/NAME.lock` across processes; without flock, or where it
    cannot be made (a read-only home), nothing is held. "store-open": while a process opens (and,
    the first time, creates) the database. "claim": while it looks for a run to continue or starts
    one, so two copies of one command started together see each other."""
    fd = None
    if fcntl is not None:
        try:
            path = Path(home) / "locks" / f"{name}.lock"
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            if fd is not None:
                os.close(fd)
            fd = None
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # closing drops the lock
