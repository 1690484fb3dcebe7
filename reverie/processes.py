"""Whether a process still runs: the lock files of runs and the server file of `reverie serve`
both name a pid that may belong to a process long gone."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
