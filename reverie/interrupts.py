"""Ctrl-C held back while libraries import their native code.

A KeyboardInterrupt raised while a C++ extension runs Python code (triton's nanobind enums,
imported by torch._dynamo when open_clip or diffusers load) cannot unwind through C++: the process
aborts with SIGABRT and a hundred-line trace instead of saying "interrupted". Such imports take
seconds, so the interrupt waits for them to end and is raised right after; a second Ctrl-C quits
at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Iterator


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signals only ever reach the main thread
        return
    received: list[int] = []

    def hold(signum, frame):
        if received:  # the second Ctrl-C: the person means it
            sys.stderr.write("\ninterrupted: everything rendered so far is saved; run the same command to continue\n")
            os._exit(130)
        received.append(signum)

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received and previous is signal.default_int_handler:
        raise KeyboardInterrupt


# Set once a SIGTERM arrived: the exit code says so (143, as a shell reports a terminated process).
terminated = threading.Event()


def terminate_as_interrupt() -> None:
    """SIGTERM (systemd, a scheduler, `kill PID`) stops a command as Ctrl-C does: runs stop between
    images and are kept, ComfyUI prompts of ours are taken off their servers, a server says what it
    leaves to the next start. Python's default for SIGTERM ends the process on the spot, with none of
    that. The SIGINT handler of the moment takes it, so deferred_interrupt holds a SIGTERM too."""
    if threading.current_thread() is not threading.main_thread():
        return

    def on_term(signum, frame):
        terminated.set()
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:  # SIGINT ignored or left to the OS: still stop here, as the sender asked
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)


def interrupted_code() -> int:
    """The exit code of a command stopped by Ctrl-C (130) or SIGTERM (143)."""
    return 143 if terminated.is_set() else 130
