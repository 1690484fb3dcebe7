"""Ctrl-C during native imports waits for them to end (a KeyboardInterrupt inside triton's C++
aborted the process), then interrupts; a second Ctrl-C quits at once."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import os, signal, sys
from reverie.interrupts import deferred_interrupt
try:
    with deferred_interrupt():
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):
            pass  # the handler has run by now; the work still finishes
        print("finished the import", flush=True)
        if sys.argv[1] == "twice":
            os.kill(os.getpid(), signal.SIGINT)
            print("never printed", flush=True)
except KeyboardInterrupt:
    print("interrupted after it", flush=True)
    sys.exit(130)
print("no interrupt", flush=True)
"""


def _run(mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=60)


def test_one_ctrl_c_is_raised_after_the_guarded_work():
    proc = _run("once")
    assert proc.returncode == 130
    assert proc.stdout.splitlines() == ["finished the import", "interrupted after it"]


def test_a_second_ctrl_c_quits_at_once_with_one_line():
    proc = _run("twice")
    assert proc.returncode == 130
    assert proc.stdout.splitlines() == ["finished the import"]
    assert proc.stderr.strip() == "interrupted: everything rendered so far is saved; run the same command to continue"


def test_the_default_handler_is_back_afterwards():
    proc = subprocess.run([sys.executable, "-c", "import signal\nfrom reverie.interrupts import deferred_interrupt\n"
                           "with deferred_interrupt(): pass\nprint(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"],
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "True"
