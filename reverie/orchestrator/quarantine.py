"""Whether a batch idea crashed the process, or the process was killed from outside.

An idea is set aside only on evidence that it is the cause. A death counts against the idea whose
round was in the engine when both hold:

1. the process died of something inside it: a fatal signal (segfault, abort, bus error) that
   faulthandler wrote to this process's fault log, or an out-of-memory kill that the kernel
   counted (/proc/vmstat's oom_kill rose while the round was in the engine). A SIGKILL from
   outside (a user, a scheduler, a test) or a power cut leaves neither, and is not counted;
2. the engine was on the same images as at the last counted death: the same round, with the same
   renders of the run already stored. Seeds follow from the run and a render's place in it, so
   that is the same seeds in the same forward pass, with no progress between the two deaths.

Two counted deaths in a row set the idea aside (--retry-failed tries it again). A kill with no
evidence neither counts nor ends a streak: the round is simply tried again.
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

CRASHES_TO_QUARANTINE = 2
FAULT_DIR = "crashes"  # under the home: one fault log per batch process, named in the notice after a crash


def oom_kills() -> Optional[int]:
    """The kernel's count of out-of-memory kills since boot, or None where it is not kept."""
    try:
        for line in Path("/proc/vmstat").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


class FaultLog:
    """For as long as a batch runs, a fatal signal inside this process writes its tracebacks to a
    file of the home instead of only to a terminal that may be gone by morning."""

    def __init__(self, home: Path, batch_id: str):
        self.batch_id = batch_id
        self.path = Path(home) / FAULT_DIR / f"batch-{batch_id}-{os.getpid()}-{int(time.time())}.log"
        self._file = None
        self._was_enabled = False

    def __enter__(self) -> "FaultLog":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Empty logs of earlier processes of this batch (the batch lock says they are gone): they
            # were killed without a fault, and an absent log says the same to judge().
            for old in self.path.parent.glob(f"batch-{self.batch_id}-*.log"):
                if old.stat().st_size == 0:
                    old.unlink()
            self._file = open(self.path, "w")
        except OSError:  # a read-only home: no record, so no death is counted (never a false quarantine)
            self._file = None
            return self
        self._was_enabled = faulthandler.is_enabled()
        faulthandler.enable(file=self._file, all_threads=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._file is None:
            return
        faulthandler.disable()
        if self._was_enabled:
            try:
                faulthandler.enable(file=sys.stderr, all_threads=True)
            except (OSError, ValueError, AttributeError):  # a stderr with no file descriptor (captured)
                pass
        self._file.close()
        self._file = None
        try:
            self.path.unlink()  # the process lived on: nothing to keep
        except OSError:
            pass

    @property
    def recording(self) -> Optional[str]:
        return str(self.path) if self._file is not None else None


def round_started(batches, item_id: int, rnd: int, fault_log: Optional[FaultLog]) -> None:
    """Before the engine takes an idea's round: what the next process reads if this one dies."""
    evidence = {"fault_log": fault_log.recording if fault_log else None, "oom_kills": oom_kills()}
    batches.round_started(item_id, rnd, json.dumps(evidence))


@dataclass(frozen=True)
class Verdict:
    set_aside: bool
    message: str


def judge(batches, row: dict[str, Any], renders: int, number: int) -> Verdict:
    """The last process died with this item's round in the engine (row["inflight_round"] set);
    `renders` is how many of its run's images are stored now, `number` the idea's place (from 1)."""
    rnd = row["inflight_round"]
    evidence = json.loads(row.get("inflight_json") or "null") or {}
    cause = _cause(evidence)
    if cause is None:
        batches.clear_inflight(row["id"])  # the streak, if any, stands as it was
        return Verdict(False, f"the last process was stopped from outside while idea {number}'s round {rnd + 1} was "
                              "rendering (no crash or out-of-memory kill recorded): not held against it; trying it again")
    here = {"round": rnd, "renders": renders}
    last = json.loads(row.get("last_crash_json") or "null")
    crashes = (row.get("crashes") or 0) + 1 if last == here else 1
    batches.record_death(row["id"], crashes, json.dumps(here))
    if crashes >= CRASHES_TO_QUARANTINE:
        return Verdict(True, f"crashed the process twice on the same images (round {rnd + 1}, {cause}): set aside; "
                             "the same command with --retry-failed tries it again")
    return Verdict(False, f"idea {number}'s round {rnd + 1} was rendering when the process died of {cause}; "
                          "trying it once more")


def _cause(evidence: dict) -> Optional[str]:
    log = evidence.get("fault_log")
    if log:
        try:
            text = Path(log).read_text(errors="replace")
        except OSError:
            text = ""
        if text.strip():
            first = text.strip().splitlines()[0].strip()
            return f"{first.rstrip('.').lower().removeprefix('fatal python error: ')} (see {log})"
    before, now = evidence.get("oom_kills"), oom_kills()
    if before is not None and now is not None and now > before:
        return "an out-of-memory kill by the kernel"
    return None
