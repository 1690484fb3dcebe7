"""Overnight best-of-N: a file of ideas, each a run of the agent loop, fair, resumable, curated.

Every idea is a run of the same graph as `make` (expand, references, render, score, judge with
the critic, the variety knobs and --target), with its own checkpoint. All ideas run at once on
their own threads and hand their rounds to the studio's one engine worker, which serves the
lowest round first: round 0 of every idea, then round 1, and so on, so a time budget (--hours)
that runs out leaves every idea with a fair share, and the engine always has the next round
waiting while other ideas expand, store and score. The calling thread coordinates: it reports
progress, marks failed ideas, and on Ctrl-C or an engine error stops every run between images.

Every render has a stable seed (derived from the batch id and the item's index), and every
committed render is found again by its spec hash, so the same command after a crash continues
where it stopped.
"""

from __future__ import annotations

import json
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from reverie.orchestrator import quarantine
from reverie.orchestrator.quarantine import CRASHES_TO_QUARANTINE
from reverie.orchestrator.requests import validate_request
from reverie.profiles import DEFAULT_PROFILE, get_profile
from reverie.types import (
    BatchFinished,
    BatchProgress,
    BatchStarted,
    Event,
    ProgressFn,
    Reference,
    Render,
    Request,
    ReverieError,
    canonical_json,
    event_from,
    no_progress,
    sha256_text,
)

DEFAULT_PER_PROMPT = 8
DEFAULT_KEEP = 4
ROUND_SIZE = 4  # seeds per round (--n): one engine job, and the unit of round-robin fairness
MAX_ROUNDS = 100  # rounds an idea may take when only a time budget bounds it
LLM_CALLS_AT_ONCE = 2  # expansions and critiques in flight across ideas: a local LLM server is one GPU too
JOIN_SECONDS = 60.0  # how long a stop waits for the runs to end between images
CONTROL_KEYS = ("steps", "cfg", "negative", "sampler", "exact", "style", "handoff_steps")  # the hand-set controls, as make's flags
ITEM_KEYS = {"idea", "profile", "n", "aspect", "megapixels", "reference", "control", "strength", *CONTROL_KEYS}


@dataclass(frozen=True)
class BatchItem:
    """One line of the batch file: an idea and its overrides."""

    index: int
    idea: str
    profile: Optional[str] = None
    n: Optional[int] = None  # this item's render budget (overrides --per-prompt)
    aspect: Optional[str] = None
    megapixels: Optional[float] = None
    references: tuple[Reference, ...] = ()
    controls: tuple[tuple[str, Any], ...] = ()  # steps, cfg, negative, sampler, exact given on this line

    def overrides(self) -> dict:
        d = {k: getattr(self, k) for k in ("profile", "n", "aspect", "megapixels") if getattr(self, k) is not None}
        if self.references:
            d["references"] = [r.__dict__ for r in self.references]
        d.update(self.controls)
        return d


@dataclass(frozen=True)
class BatchOptions:
    per_prompt: Optional[int] = None  # None: 8, or unlimited when a time budget is given
    keep: int = DEFAULT_KEEP
    hours: Optional[float] = None
    profile: str = DEFAULT_PROFILE
    engine: str = "auto"
    aspect: str = "1:1"
    megapixels: float = 1.0
    target: Optional[float] = None
    rounds: Optional[int] = None  # None: as many as the render budget needs
    n: Optional[int] = None  # seeds per round; None: 4
    policy: str = "explore"
    controls: dict = field(default_factory=dict)  # --steps, --cfg, --negative, --sampler, --exact for every idea

    def identity(self) -> dict:
        # Loop options at their defaults are left out, so a batch started before they existed
        # keeps its id (and continues) after an upgrade.
        d = dict(self.__dict__)
        if not d["controls"]:
            del d["controls"]
        for key in ("target", "rounds", "n"):
            if d[key] is None:
                del d[key]
        if d["policy"] == "explore":
            del d["policy"]
        return d


@dataclass
class BatchItemResult:
    index: int
    idea: str
    run_id: str
    budget: Optional[int]
    rendered: int
    kept: list[Render]
    near_duplicates: list[int] = field(default_factory=list)  # ids of kept renders that are near-duplicates
    status: str = "done"  # done | stopped (time budget) | failed
    error: Optional[str] = None  # why it failed, one line

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "idea": self.idea,
            "run_id": self.run_id,
            "budget": self.budget,
            "rendered": self.rendered,
            "status": self.status,
            "error": self.error,
            "kept": [
                {"id": r.id, "path": r.path, "seed": r.seed, "prompt": r.prompt,
                 "score": r.scores.composite if r.scores else None, "near_duplicate": r.id in self.near_duplicates}
                for r in self.kept
            ],
        }


@dataclass
class BatchResult:
    batch_id: str
    items: list[BatchItemResult]
    report_path: Path
    stop_reason: str
    home: Path
    renders_this_session: int = 0
    engine_busy_seconds: float = 0.0
    engine_wall_seconds: float = 0.0
    notices: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[BatchItemResult]:
        return [i for i in self.items if i.status == "failed"]

    def failure_line(self) -> Optional[str]:
        """e.g. "1 of 5 ideas failed: 2. a red car (weights for sdxl ...)"; None when none failed."""
        if not self.failed:
            return None
        reasons = "; ".join(f"{i.index + 1}. {i.idea[:40]} ({i.error})" for i in self.failed)
        return f"{len(self.failed)} of {len(self.items)} ideas failed: {reasons}"

    @property
    def engine_busy_fraction(self) -> float:
        """Share of the engine's working span spent rendering (1.0 = never idle between rounds)."""
        return self.engine_busy_seconds / self.engine_wall_seconds if self.engine_wall_seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "batch_id": self.batch_id,
            "home": str(self.home),
            "report": str(self.report_path),
            "stop_reason": self.stop_reason,
            "renders_this_session": self.renders_this_session,
            "engine_busy_fraction": round(self.engine_busy_fraction, 4),
            "items": [i.to_dict() for i in self.items],
            "failed": len(self.failed),
            "notices": self.notices,
        }


# -- the batch file ------------------------------------------------------------------------
def parse_batch_text(text: str, source: str = "batch file") -> list[BatchItem]:
    """Plain text (one idea a line; blank lines and # comments skipped) or JSONL (one object a line)."""
    items: list[BatchItem] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("{"):
            items.append(_parse_json_item(line, lineno, source, len(items)))
        else:
            items.append(BatchItem(index=len(items), idea=line))
    if not items:
        raise ReverieError(f"{source} has no ideas: write one idea per line (or JSONL with an \"idea\" field)")
    return items


def _parse_json_item(line: str, lineno: int, source: str, index: int) -> BatchItem:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ReverieError(f"{source} line {lineno} is not valid JSON ({e.msg}): fix it or write the idea as plain text") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("idea"), str):
        raise ReverieError(f"{source} line {lineno} needs an \"idea\" string, e.g. {{\"idea\": \"a fox in the rain\", \"n\": 8}}")
    unknown = set(obj) - ITEM_KEYS
    if unknown:
        raise ReverieError(f"{source} line {lineno} has unknown field(s) {', '.join(sorted(unknown))}: use {', '.join(sorted(ITEM_KEYS))}")
    def wrong(field: str, expected: str, example: str) -> ReverieError:
        return ReverieError(f"{source} line {lineno}: \"{field}\" must be {expected} (got {obj[field]!r}), e.g. {example}")

    n = obj.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ReverieError(f"{source} line {lineno}: \"n\" must be a positive whole number of images (got {n!r}), e.g. \"n\": 8")
    for key, example in (("profile", '"profile": "sdxl"'), ("aspect", '"aspect": "2:3"'),
                         ("reference", '"reference": "sketch.png"'), ("control", '"control": "canny"')):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            raise wrong(key, "a string", example)
    for key, example in (("megapixels", '"megapixels": 1.0'), ("strength", '"strength": 0.8')):
        if obj.get(key) is not None and (not isinstance(obj[key], (int, float)) or isinstance(obj[key], bool)):
            raise wrong(key, "a number", example)
    refs: tuple[Reference, ...] = ()
    if obj.get("reference"):
        path = Path(obj["reference"]).expanduser()
        if not path.is_file():
            raise ReverieError(f"{source} line {lineno}: reference image {path} does not exist: fix the path or drop \"reference\"")
        refs = (Reference(str(path.resolve()), obj.get("control") or "auto", float(obj.get("strength", 0.8))),)
    elif obj.get("control"):
        raise ReverieError(f"{source} line {lineno}: \"control\" needs a \"reference\" image to take the structure from")
    for key, kinds, example in (("steps", (int,), '"steps": 20'), ("cfg", (int, float), '"cfg": 4.5'),
                                ("negative", (str,), '"negative": "blurry"'), ("sampler", (str,), '"sampler": "euler"'),
                                ("exact", (bool,), '"exact": true'), ("style", (str,), '"style": "watercolor"')):
        value = obj.get(key)
        if value is not None and (not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)):
            raise wrong(key, {"steps": "a whole number", "cfg": "a number", "exact": "true or false"}.get(key, "a string"),
                        example)
    mp = obj.get("megapixels")
    return BatchItem(index=index, idea=obj["idea"], profile=obj.get("profile"), n=n, aspect=obj.get("aspect"),
                     megapixels=float(mp) if mp is not None else None, references=refs,
                     controls=tuple((k, obj[k]) for k in CONTROL_KEYS if obj.get(k) is not None))


def read_batch_file(path: str | Path) -> tuple[str, list[BatchItem]]:
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReverieError(f"batch file {p} does not exist: give a text file with one idea per line") from None
    except UnicodeDecodeError:
        raise ReverieError(f"batch file {p} is not UTF-8 text: save it as UTF-8 with one idea per line") from None
    except OSError as e:
        raise ReverieError(f"cannot read batch file {p} ({e.strerror}): check the path and permissions") from None
    return text, parse_batch_text(text, source=str(p))


def make_batch_id(text: str, options: BatchOptions) -> str:
    return sha256_text(text + "\x00" + canonical_json(options.identity()))[:16]


def item_seed(batch_id: str, index: int) -> int:
    """A stable first seed per item, so a resumed batch asks for exactly the same renders."""
    return int(sha256_text(f"{batch_id}:{index}")[:8], 16) % (2**31 - 2**20)


# -- the runs ------------------------------------------------------------------------------
@dataclass(eq=False)
class _Item:
    row_id: int
    index: int
    idea: str
    run: Any  # the opened Run (orchestrator/run.py): it holds the run's lock while the batch goes
    budget: Optional[int]  # None: as many as the time budget allows
    done: int = 0
    best: Optional[float] = None
    error: Optional[str] = None  # set when the item failed
    finished: bool = False  # its run reached its end (budget, target or time)
    stop_reason: str = ""

    @property
    def run_id(self) -> str:
        return self.run.id

    @property
    def request(self) -> Request:
        return self.run.request


class BatchRunner:
    def __init__(self, studio, text: str, items: Sequence[BatchItem], options: BatchOptions, source: str,
                 progress: ProgressFn = no_progress, retry_failed: bool = False):
        from reverie.orchestrator.policy import POLICIES

        if options.keep < 1:
            raise ReverieError(f"--keep must be at least 1 (got {options.keep})")
        if options.per_prompt is not None and options.per_prompt < 1:
            raise ReverieError(f"--per-prompt must be at least 1 (got {options.per_prompt})")
        if options.hours is not None and not (0 < options.hours <= 24 * 14):
            raise ReverieError(f"--hours must be between 0 and 336 (got {options.hours}); e.g. --hours 8 for one night")
        if options.policy not in POLICIES:
            raise ReverieError(f"unknown loop policy {options.policy!r}: use one of {', '.join(POLICIES)}")
        # The batch-wide options go through make's checks once, before anything is opened: a bad
        # --target or --n is one line, not a failure of every idea.
        validate_request(Request(idea="options check", n=_given(options.n, ROUND_SIZE), rounds=_given(options.rounds, 1),
                                 target=options.target, aspect=options.aspect, megapixels=options.megapixels,
                                 profile=options.profile,
                                 **{**options.controls, "style": studio.style(options.controls.get("style"))}))
        self.studio, self.store = studio, studio.store
        self.options, self.source, self.text = options, source, text
        self.progress = progress
        self.retry_failed = retry_failed
        self.batch_id = make_batch_id(text, options)
        self.items_in = list(items)
        self.renders_now = 0
        self.stop = threading.Event()
        self.failures: dict[int, str] = {}  # item index -> why it failed, this session
        self.failed_before: set[int] = set()
        self.runs: list = []  # every Run opened, closed when the batch ends however it ends
        self.fault_log: Optional[quarantine.FaultLog] = None

    # -- setup -----------------------------------------------------------------------------
    def _budget(self, item: BatchItem) -> Optional[int]:
        if item.n is not None:
            return item.n
        if self.options.per_prompt is not None:
            return self.options.per_prompt
        return None if self.options.hours else DEFAULT_PER_PROMPT

    def _open(self) -> list[_Item]:
        self.studio.checkpointer()  # a damaged checkpoint file is named before the batch or any idea's run is made
        self.store.batches.open(self.batch_id, self.source, canonical_json(self.options.identity()))
        self.failed_before = self.store.batches.failed_indices(self.batch_id)
        if self.failed_before:
            self._notice(f"retrying {len(self.failed_before)} idea(s) that failed last time: "
                         + ", ".join(str(i + 1) for i in sorted(self.failed_before)))
        items = []
        for it in self.items_in:
            row = self.store.batches.item(self.batch_id, it.index)
            if row and (row["crashes"] or 0) >= CRASHES_TO_QUARANTINE and not self.retry_failed:
                self.failures[it.index] = row["error"]  # set aside: only --retry-failed tries it again
                continue
            try:
                items.append(self._open_item(it))
            except ReverieError as e:
                self._fail_item(it.index, it.idea, None, str(e))
        return items

    def _request(self, it: BatchItem, seed: int) -> Request:
        budget = self._budget(it)
        n = _given(self.options.n, ROUND_SIZE)
        n = min(n, budget) if budget else n
        rounds = _given(self.options.rounds, max(1, math.ceil(budget / n)) if budget else MAX_ROUNDS)
        return validate_request(Request(
            idea=it.idea, n=n, rounds=rounds, target=self.options.target, max_renders=budget,
            aspect=it.aspect or self.options.aspect, megapixels=it.megapixels or self.options.megapixels,
            profile=it.profile or self.options.profile, references=it.references, seed=seed,
            **{**(controls := {**self.options.controls, **dict(it.controls)}),
               "style": self.studio.style(controls.get("style"))}))

    def _open_item(self, it: BatchItem) -> _Item:
        """Validate one idea and find or create its lineage run; a ReverieError fails this idea only."""
        seed = item_seed(self.batch_id, it.index)
        req = self._request(it, seed)
        row = self.store.batches.item(self.batch_id, it.index)
        if row and row["inflight_round"] is not None:  # the last process died while the engine had its round
            verdict = quarantine.judge(self.store.batches, row, renders=self.store.ok_count(row["run_id"]),
                                       number=it.index + 1)
            if verdict.set_aside:
                raise ReverieError(verdict.message)
            self._notice(verdict.message)
        elif row and self.retry_failed and (row["crashes"] or 0) >= CRASHES_TO_QUARANTINE:
            self.store.batches.round_ended(row["id"])  # --retry-failed: a clean slate
        # Opened as every run is, holding its lock until its thread ends: another process sees it running.
        run = self.studio.open_run(req, run_id=row["run_id"] if row and row["run_id"] else None,
                                   progress=self.progress)
        self.runs.append(run)
        run_id = run.id
        row = self.store.batches.put_item(
            self.batch_id, it.index, idea=req.idea, overrides_json=canonical_json(it.overrides()),
            budget=self._budget(it), base_seed=seed, run_id=run_id, status="running", error=None)
        item = _Item(row_id=row["id"], index=it.index, idea=req.idea, run=run, budget=self._budget(it))
        item.done = len(self.store.render_rows(run_id))
        best = [r.scores.composite for r in self.store.renders(run_id) if r.scores]
        item.best = max(best) if best else None
        return item

    def _fail_item(self, index: int, idea: str, run_id: Optional[str], error: str) -> None:
        """Mark one idea failed with its reason, stored at once; the batch goes on without it."""
        it = self.items_in[index]
        fields = {"status": "failed", "error": error}
        if self.store.batches.item(self.batch_id, index) is None:
            fields.update(idea=idea, overrides_json=canonical_json(it.overrides()), budget=self._budget(it),
                          base_seed=item_seed(self.batch_id, index), run_id=run_id)
        self.store.batches.put_item(self.batch_id, index, **fields)
        self.failures[index] = error
        self._notice(f"idea {index + 1} ({idea[:40]}) failed: {error}; the other ideas go on")

    def _notice(self, message: str) -> None:
        self.studio.notice(message, self.progress)

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> BatchResult:
        from reverie.store.locks import RunLock

        # One process per batch: a second copy of the same command would render the same seeds.
        lock = RunLock(self.store.home, f"batch-{self.batch_id}")
        if not lock.acquire():
            raise ReverieError(f"batch {self.batch_id} is already running in another process: let it finish, "
                               "or stop it and run the same command again to continue")
        try:
            with quarantine.FaultLog(self.store.home, self.batch_id) as self.fault_log:
                return self._run()
        finally:
            for run in self.runs:
                run.close()
            lock.release()

    def _run(self) -> BatchResult:
        items = self._open()
        budget_s = self.options.hours * 3600.0 if self.options.hours else None
        spent_before = self.store.batches.seconds_spent(self.batch_id)
        started = time.monotonic()
        deadline = started + max(0.0, budget_s - spent_before) if budget_s is not None else None
        total = sum(i.budget for i in items) if all(i.budget is not None for i in items) else None
        done_before = sum(i.done for i in items)
        self.progress(BatchStarted(
            batch_id=self.batch_id, total=total, done=done_before, resumed=done_before > 0, hours=self.options.hours,
            seconds_left=None if budget_s is None else max(0.0, budget_s - spent_before),
            items=[{"index": i.index, "idea": i.idea, "budget": i.budget, "done": i.done, "best": i.best, "run_id": i.run_id}
                   for i in items]))
        # Built once, before the runs start, so their notices come once and first.
        if items:
            engine = self.studio.engine_for(get_profile(items[0].request.profile), self.progress)
            self.studio.expander_and_critic(self.progress, engine)
        self.studio.scorer(self.progress)

        inbox: "queue.Queue[tuple[str, _Item, Any]]" = queue.Queue()
        gate = threading.BoundedSemaphore(LLM_CALLS_AT_ONCE)
        label = f"{self.options.hours:g} h" if self.options.hours else ""
        self.stop.clear()
        worker = self.studio.worker
        busy0, first0 = worker.busy_seconds, worker.last_end
        threads = [threading.Thread(target=self._item_thread, args=(item, inbox, deadline, label, gate),
                                    name=f"reverie-batch-idea-{item.index + 1}", daemon=True) for item in items]
        for t in threads:
            t.start()
        try:
            running = len(threads)
            while running:
                try:
                    kind, item, payload = inbox.get(timeout=0.25)
                except queue.Empty:
                    continue
                if kind == "event":
                    self._on_event(item, payload, items, started, total, budget_s, spent_before)
                elif kind == "failed":  # this idea's own problem: it fails alone, the others go on
                    running -= 1
                    item.error = str(payload)
                    self._fail_item(item.index, item.idea, item.run_id, item.error)
                elif kind == "crashed":  # the engine or the scorer broke: the whole batch stops
                    running -= 1
                    raise _step_error(item, payload)
                else:  # done, stopped
                    running -= 1
                    item.finished = kind == "done"
                    item.stop_reason = payload or ""
        except BaseException:
            self._stop_runs(threads)
            self.store.batches.set_status(self.batch_id, "interrupted")
            self.store.batches.spend(self.batch_id, spent_before + time.monotonic() - started)
            raise
        self._stop_runs(threads)
        self.store.batches.spend(self.batch_id, spent_before + time.monotonic() - started)
        timed_out = deadline is not None and time.monotonic() >= deadline
        busy = worker.busy_seconds - busy0
        wall = (worker.last_end - worker.first_start) if worker.last_end and worker.first_start else 0.0
        if first0 is not None and worker.last_end:  # a second batch on the same studio: its own span
            wall = worker.last_end - max(first0, worker.first_start)
        return self._finish(items, self._stop_reason(items, timed_out, label), busy, wall)

    def _item_thread(self, item: _Item, inbox: "queue.Queue", deadline: Optional[float], label: str, gate) -> None:
        from reverie.orchestrator.worker import RenderStopped

        def progress(event: Event) -> None:
            inbox.put(("event", item, event))

        batches = self.store.batches
        try:
            final = item.run.drive(progress=progress, policy=self.options.policy, order=item.index,
                                   deadline=deadline, deadline_label=label, stop=self.stop, llm_gate=gate,
                                   on_round_start=lambda rnd: quarantine.round_started(batches, item.row_id, rnd,
                                                                                      self.fault_log),
                                   on_round_end=lambda rnd, ok: (batches.round_ended(item.row_id) if ok
                                                                 else batches.clear_inflight(item.row_id)))
            inbox.put(("done", item, final.get("stop_reason", "")))
        except RenderStopped:
            inbox.put(("stopped", item, ""))
        except ReverieError as e:
            inbox.put(("failed", item, e))
        except BaseException as e:  # handed to the coordinator, which stops the batch
            inbox.put(("crashed", item, e))
        finally:
            # Still standing: whatever happened to the round, it did not take the process down.
            batches.clear_inflight(item.row_id)
            item.run.close()  # ended: another process may continue it

    def _stop_runs(self, threads: list[threading.Thread]) -> None:
        """Stop every run between images and wait for them: what they rendered is stored first."""
        self.stop.set()  # every job of these runs carries it: queued ones never start, the running one stops
        deadline = time.monotonic() + JOIN_SECONDS
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _on_event(self, item: _Item, event: Event, items, started, total, budget_s, spent_before) -> None:
        if event.kind == "rendered":
            item.done += 1
            self.renders_now += 1
            self._report_progress(items, started, total, budget_s, spent_before)
        elif event.kind == "scored":
            if event.data.get("best") is not None:
                item.best = event.data["best"] if item.best is None else max(item.best, event.data["best"])
            self._report_progress(items, started, total, budget_s, spent_before)
        elif event.kind in ("notice", "expanded", "judged", "control"):
            self.progress(event_from(event.kind, {**event.data, "index": item.index}))

    def _report_progress(self, items, started, total, budget_s, spent_before) -> None:
        elapsed = time.monotonic() - started
        done = sum(i.done for i in items)
        rate = self.renders_now / elapsed * 60.0 if elapsed > 0 and self.renders_now else 0.0
        if total is not None and rate > 0:
            eta = (total - done) / rate * 60.0
        elif budget_s is not None:
            eta = max(0.0, budget_s - spent_before - elapsed)
        else:
            eta = None
        bests = [i.best for i in items if i.best is not None]
        self.progress(BatchProgress(
            done=done, total=total, images_per_minute=rate, eta_seconds=eta, best=max(bests) if bests else None,
            items=[{"index": i.index, "done": i.done, "budget": i.budget, "best": i.best} for i in items]))

    def _stop_reason(self, items: list[_Item], timed_out: bool, label: str) -> str:
        failed = len(self.failures)
        ok = len(self.items_in) - failed
        if not ok:
            return f"every idea failed ({failed})"
        ended = [i.stop_reason for i in items if i.error is None and i.stop_reason]
        if timed_out:
            reason = f"time budget reached ({label})"
        elif ended and all(r.startswith("target") for r in ended):
            reason = "every idea reached its target"
        else:
            reason = "every idea reached its budget or target"
        return f"{ok} of {len(self.items_in)} ideas finished, {failed} failed; {reason}" if failed else reason

    # -- curation --------------------------------------------------------------------------
    def _finish(self, items: list[_Item], stop_reason: str, busy: float, wall: float) -> BatchResult:
        from reverie.orchestrator.report import write_report

        results = []
        for item in items:
            # From the store: a resumed run may have adopted renders a crash left without their rows.
            item.done = len(self.store.render_rows(item.run_id))
            # The one curation (the judge's pick first), near-duplicates filling up to --keep.
            curated = self.studio.curate(item.run_id, self.options.keep, fill=True)
            kept, dups = curated.renders, curated.near_duplicates
            self.store.batches.set_keeps(item.row_id, [(r.id, r.id in dups) for r in kept])
            finished = item.finished or (item.budget is not None and item.done >= item.budget)
            status = "failed" if item.error else "done" if finished else "stopped"
            if not item.error:  # a failed item's row already holds status and reason
                self.store.batches.put_item(self.batch_id, item.index, status=status)
            results.append(BatchItemResult(index=item.index, idea=item.idea, run_id=item.run_id, budget=item.budget,
                                           rendered=item.done, kept=kept, near_duplicates=sorted(dups), status=status,
                                           error=item.error))
        opened = {i.index for i in items}
        for it in self.items_in:  # failed before it could start: nothing rendered this time
            if it.index not in opened:
                row = self.store.batches.item(self.batch_id, it.index)
                results.append(BatchItemResult(index=it.index, idea=it.idea, run_id=row["run_id"] or "",
                                               budget=row["budget"], rendered=0, kept=[], status="failed",
                                               error=row["error"]))
        results.sort(key=lambda r: r.index)
        report = write_report(self.store, self.batch_id, clip_cache=getattr(self.studio, "clip_embeddings", None))
        self.store.batches.finish(self.batch_id, str(report))
        self.progress(BatchFinished(batch_id=self.batch_id, report=str(report), reason=stop_reason,
                                    renders=self.renders_now))
        return BatchResult(batch_id=self.batch_id, items=results, report_path=report, stop_reason=stop_reason,
                           home=self.store.home, renders_this_session=self.renders_now, engine_busy_seconds=busy,
                           engine_wall_seconds=wall, notices=list(self.studio.notices))


def _given(value: Optional[int], default: int) -> int:
    """An option's value when given (0 included, so that checks can refuse it), else the default."""
    return default if value is None else value


def _step_error(item: _Item, error: BaseException) -> BaseException:
    """A run's unexpected error as the coordinator raises it: one line naming the idea, what
    broke and what to do (an engine that crashed, a broken scorer)."""
    if isinstance(error, (ReverieError, KeyboardInterrupt, SystemExit)):
        return error
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    wrapped = ReverieError(f"idea {item.index + 1} failed ({type(error).__name__}: {first}): everything finished "
                           "is saved; fix the cause and run the same command to continue")
    wrapped.__cause__ = error
    return wrapped


def run_batch(studio, file: str | Path, options: BatchOptions, progress: ProgressFn = no_progress,
              retry_failed: bool = False) -> BatchResult:
    text, items = read_batch_file(file)
    return BatchRunner(studio, text, items, options, source=str(Path(file).expanduser()), progress=progress,
                       retry_failed=retry_failed).run()
