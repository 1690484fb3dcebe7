"""Overnight best-of-N: a file of ideas, rendered fairly, resumable, curated into a contact sheet.

The work is a pipeline of three threads around one coordinator:

    expander thread  -- writes the next rounds' prompts while the engine is busy
    engine thread    -- renders one round (a few seeds of one idea) at a time, always with the
                        next round already waiting in its queue
    scorer thread    -- scores what the engine just finished

Only the coordinator (the calling thread) touches the store, so SQLite sees one writer.

Rounds are handed out round-robin: round 0 of every idea, then round 1 of every idea, and so
on, so a time budget (--hours) that runs out leaves every idea with a fair share. Every render
has a stable seed (derived from the batch id and the item's index), and every committed render
is found again by its spec hash, so the same command after a crash continues where it stopped.
"""

from __future__ import annotations

import json
import math
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from reverie.orchestrator.curation import keep_diverse
from reverie.render.profiles import get_profile
from reverie.orchestrator.studio import render_size
from reverie.types import (
    Control,
    Event,
    Expansion,
    ProgressFn,
    Reference,
    Render,
    RenderSpec,
    Request,
    ReverieError,
    canonical_json,
    no_progress,
    sha256_text,
)

DEFAULT_PER_PROMPT = 8
DEFAULT_KEEP = 4
ROUND_SIZE = 4  # seeds per round: one engine call, and the unit of round-robin fairness
LOOKAHEAD = 6  # rounds expanded ahead of the engine
RENDERS_IN_FLIGHT = 2  # one rendering, one waiting: the engine never waits for the coordinator
JOIN_SECONDS = 120.0  # how long an error waits for the workers to finish their current job
ITEM_KEYS = {"idea", "profile", "n", "aspect", "megapixels", "reference", "control", "strength"}


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

    def overrides(self) -> dict:
        d = {k: getattr(self, k) for k in ("profile", "n", "aspect", "megapixels") if getattr(self, k) is not None}
        if self.references:
            d["references"] = [r.__dict__ for r in self.references]
        return d


@dataclass(frozen=True)
class BatchOptions:
    per_prompt: Optional[int] = None  # None: 8, or unlimited when a time budget is given
    keep: int = DEFAULT_KEEP
    hours: Optional[float] = None
    profile: str = "z-image-turbo"
    engine: str = "auto"
    aspect: str = "1:1"
    megapixels: float = 1.0

    def identity(self) -> dict:
        return dict(self.__dict__)


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
    mp = obj.get("megapixels")
    return BatchItem(index=index, idea=obj["idea"], profile=obj.get("profile"), n=n, aspect=obj.get("aspect"),
                     megapixels=float(mp) if mp is not None else None, references=refs)


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


# -- the pipeline --------------------------------------------------------------------------
@dataclass(eq=False)
class _Item:
    row_id: int
    index: int
    idea: str
    request: Request
    run_id: str
    base_seed: int
    budget: Optional[int]  # None: as many as the time budget allows
    round_size: int
    width: int
    height: int
    engine: str
    control: Optional[Control] = None
    done: int = 0
    best: Optional[float] = None
    error: Optional[str] = None  # set when the item failed; its rounds are skipped from then on

    def rounds(self) -> Optional[int]:
        return None if self.budget is None else math.ceil(self.budget / self.round_size)

    def seeds(self, rnd: int) -> list[int]:
        first = rnd * self.round_size
        last = first + self.round_size if self.budget is None else min(self.budget, first + self.round_size)
        return [self.base_seed + k for k in range(first, last)]


@dataclass(eq=False)
class _Slot:
    item: _Item
    round: int
    prompt_id: Optional[int] = None
    specs: list[RenderSpec] = field(default_factory=list)
    sent: bool = False


class _Stopped(Exception):
    """Raised inside a worker's job once the batch is stopping, so an engine quits between images."""


class _Worker(threading.Thread):
    """Runs fn on each job from its queue and posts (kind, job, result, error) to the outbox.

    Daemon only as the last resort: every way out of the coordinator sets `stop`, sends the
    sentinel and joins, because a process that exits while a thread is inside torch aborts
    ("terminate called without an active exception") instead of printing its one error line.
    """

    def __init__(self, kind: str, fn, outbox: "queue.Queue", stop: threading.Event):
        super().__init__(name=f"reverie-batch-{kind}", daemon=True)
        self.kind, self.fn, self.outbox, self.stop = kind, fn, outbox, stop
        self.inbox: "queue.Queue" = queue.Queue()

    def run(self) -> None:
        while (job := self.inbox.get()) is not None:
            if self.stop.is_set():
                continue  # drain what was queued without working on it, up to the sentinel
            try:
                self.outbox.put((self.kind, job, self.fn(job), None))
            except BaseException as e:  # handed to the coordinator, which raises it
                self.outbox.put((self.kind, job, None, e))


class BatchRunner:
    def __init__(self, studio, text: str, items: Sequence[BatchItem], options: BatchOptions, source: str,
                 progress: ProgressFn = no_progress, engine=None, expander=None, scorer=None):
        from reverie.orchestrator.studio import validate_request

        if options.keep < 1:
            raise ReverieError(f"--keep must be at least 1 (got {options.keep})")
        if options.per_prompt is not None and options.per_prompt < 1:
            raise ReverieError(f"--per-prompt must be at least 1 (got {options.per_prompt})")
        if options.hours is not None and not (0 < options.hours <= 24 * 14):
            raise ReverieError(f"--hours must be between 0 and 336 (got {options.hours}); e.g. --hours 8 for one night")
        self.studio, self.store = studio, studio.store
        self.options, self.source, self.text = options, source, text
        self.progress = progress
        self.batch_id = make_batch_id(text, options)
        self.items_in = list(items)
        self._validate = validate_request
        self._engine, self._expander, self._scorer = engine, expander, scorer
        self.busy = 0.0
        self.first_start: Optional[float] = None
        self.last_end: Optional[float] = None
        self.renders_now = 0
        self.embeddings: dict[int, tuple] = {}
        self.stop = threading.Event()
        self.failures: dict[int, str] = {}  # item index -> why it failed, this session
        self.failed_before: set[int] = set()

    # -- setup -----------------------------------------------------------------------------
    def _budget(self, item: BatchItem) -> Optional[int]:
        if item.n is not None:
            return item.n
        if self.options.per_prompt is not None:
            return self.options.per_prompt
        return None if self.options.hours else DEFAULT_PER_PROMPT

    def _open(self) -> list[_Item]:
        db = self.store.db
        with db.conn:
            if not list(db.query("select id from batches where id = ?", [self.batch_id])):
                db["batches"].insert({"id": self.batch_id, "source": self.source, "options_json": canonical_json(self.options.identity()),
                                      "status": "running", "seconds_spent": 0.0, "report_path": "", "created": time.time(),
                                      "finished": None})
            else:
                db["batches"].update(self.batch_id, {"status": "running"})
        items = []
        self.failed_before = {r["idx"] for r in db.query(
            "select idx from batch_items where batch_id = ? and status = 'failed'", [self.batch_id])}
        if self.failed_before:
            self._notice(f"retrying {len(self.failed_before)} idea(s) that failed last time: "
                         + ", ".join(str(i + 1) for i in sorted(self.failed_before)))
        for it in self.items_in:
            try:
                items.append(self._open_item(it))
            except ReverieError as e:
                self._fail_item(it.index, it.idea, None, str(e))
        return items

    def _open_item(self, it: BatchItem) -> _Item:
        """Validate one idea and find or create its lineage run; a ReverieError fails this idea only."""
        db = self.store.db
        profile = get_profile(it.profile or self.options.profile)
        budget = self._budget(it)
        round_size = min(ROUND_SIZE, budget) if budget else ROUND_SIZE
        seed = item_seed(self.batch_id, it.index)
        req = self._validate(Request(idea=it.idea, n=round_size, rounds=max(1, math.ceil(budget / round_size)) if budget else 100,
                                     aspect=it.aspect or self.options.aspect, megapixels=it.megapixels or self.options.megapixels,
                                     profile=profile.name, references=it.references, seed=seed))
        engine = self._engine or self.studio.engine_for(profile, self.progress)
        width, height = render_size(req, profile, engine)
        rows = list(db.query("select * from batch_items where batch_id = ? and idx = ?", [self.batch_id, it.index]))
        if rows and rows[0]["run_id"]:
            row = rows[0]
            run_id = row["run_id"]
            if row["status"] == "failed":  # retried: it may have been fixed (weights pulled, image replaced)
                with db.conn:
                    db["batch_items"].update(row["id"], {"status": "running", "error": None})
        elif rows:  # failed before its run was made
            run_id = self.store.create_run(req, engine.name, seed)
            with db.conn:
                db["batch_items"].update(rows[0]["id"], {"run_id": run_id, "status": "running", "error": None})
            row = rows[0]
        else:
            run_id = self.store.create_run(req, engine.name, seed)
            with db.conn:
                db["batch_items"].insert({"batch_id": self.batch_id, "idx": it.index, "idea": req.idea,
                                          "overrides_json": canonical_json(it.overrides()), "budget": budget,
                                          "base_seed": seed, "run_id": run_id, "status": "running"})
            row = next(db.query("select * from batch_items where batch_id = ? and idx = ?", [self.batch_id, it.index]))
        item = _Item(row_id=row["id"], index=it.index, idea=req.idea, request=req, run_id=run_id, base_seed=seed,
                     budget=budget, round_size=round_size, width=width, height=height, engine=engine.name)
        item.done = len(self.store.render_rows(run_id))
        best = [r.scores.composite for r in self.store.renders(run_id) if r.scores]
        item.best = max(best) if best else None
        if req.references:
            # The same reference step as Studio.make: preprocessed, stored and linked to the run.
            item.control = self.studio._control(req, self.store, run_id, self.progress)
        return item

    def _fail_item(self, index: int, idea: str, run_id: Optional[str], error: str) -> None:
        """Mark one idea failed with its reason, stored at once; the batch goes on without it."""
        db = self.store.db
        with db.conn:
            rows = list(db.query("select id from batch_items where batch_id = ? and idx = ?", [self.batch_id, index]))
            if rows:
                db["batch_items"].update(rows[0]["id"], {"status": "failed", "error": error})
            else:
                it = self.items_in[index]
                db["batch_items"].insert({"batch_id": self.batch_id, "idx": index, "idea": idea,
                                          "overrides_json": canonical_json(it.overrides()), "budget": self._budget(it),
                                          "base_seed": item_seed(self.batch_id, index), "run_id": run_id,
                                          "status": "failed", "error": error})
        self.failures[index] = error
        self._notice(f"idea {index + 1} ({idea[:40]}) failed: {error}; the other ideas go on")

    def _notice(self, message: str) -> None:
        self.studio.notices.append(message)
        self.progress(Event("notice", {"message": message}))

    def _seconds_spent(self) -> float:
        row = next(self.store.db.query("select seconds_spent from batches where id = ?", [self.batch_id]))
        return float(row["seconds_spent"] or 0.0)

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> BatchResult:
        from reverie.store.recovery import RunLock

        # One process per batch: a second copy of the same command would render the same seeds.
        lock = RunLock(self.store.home, f"batch-{self.batch_id}")
        if not lock.acquire():
            raise ReverieError(f"batch {self.batch_id} is already running in another process: let it finish, "
                               "or stop it and run the same command again to continue")
        try:
            return self._run()
        finally:
            lock.release()

    def _run(self) -> BatchResult:
        items = self._open()
        expander = self._expander or self.studio.expander_and_critic(self.progress)[0]
        scorer = self._scorer or self.studio.scorer(self.progress)
        budget_s = self.options.hours * 3600.0 if self.options.hours else None
        spent_before = self._seconds_spent()
        started = time.monotonic()
        total = sum(i.budget for i in items) if all(i.budget is not None for i in items) else None
        done_before = sum(i.done for i in items)
        self.progress(Event("batch_started", {
            "batch_id": self.batch_id, "total": total, "done": done_before, "resumed": done_before > 0,
            "hours": self.options.hours, "seconds_left": None if budget_s is None else max(0.0, budget_s - spent_before),
            "items": [{"index": i.index, "idea": i.idea, "budget": i.budget, "done": i.done, "best": i.best, "run_id": i.run_id}
                      for i in items]}))

        outbox: "queue.Queue" = queue.Queue()
        def expand(slot: _Slot) -> Expansion:
            # The LLM client files its call log under the studio's current run; only this thread
            # reads it during a batch, so each call is linked to the item it was made for.
            self.studio._run_id = slot.item.run_id
            return expander.expand(slot.item.idea, get_profile(slot.item.request.profile), k=1,
                                   seed=slot.item.base_seed + slot.round)[0]

        self.stop.clear()
        workers = {
            "expand": _Worker("expand", expand, outbox, self.stop),
            "render": _Worker("render", self._render_job, outbox, self.stop),
            "score": _Worker("score", lambda job: _score_job(scorer, job), outbox, self.stop),
        }
        for w in workers.values():
            w.start()
        slots = self._slot_order(items)
        pipeline: deque[_Slot] = deque()
        rendering = 0
        scoring = 0
        exhausted = False
        stop_reason = ""

        def time_up() -> bool:
            return budget_s is not None and spent_before + (time.monotonic() - started) >= budget_s

        try:
            # Renders committed before a crash but never scored are scored first.
            for item in items:
                unscored = [r for r in self.store.renders(item.run_id) if r.scores is None]
                if unscored:
                    workers["score"].inbox.put((item, [(r.id, r.path, r.prompt) for r in unscored]))
                    scoring += 1
            while True:
                if time_up() and not stop_reason:
                    stop_reason = f"time budget reached ({self.options.hours:g} h)"
                    pipeline = deque(s for s in pipeline if s.sent)
                    exhausted = True
                while not exhausted and len(pipeline) < LOOKAHEAD:
                    slot = next(slots, None)
                    if slot is None:
                        exhausted = True
                        break
                    self._prepare(slot)
                    if slot.prompt_id is None:
                        workers["expand"].inbox.put(slot)
                    pipeline.append(slot)
                for slot in list(pipeline):
                    if rendering >= RENDERS_IN_FLIGHT:
                        break
                    if slot.sent or slot.prompt_id is None or slot.item.error is not None:
                        continue
                    todo = [s for s in slot.specs if self.store.find_render(slot.item.run_id, s) is None]
                    if not todo:  # rendered before a crash
                        pipeline.remove(slot)
                        continue
                    slot.sent = True
                    rendering += 1
                    workers["render"].inbox.put((slot, todo))
                if exhausted and not pipeline and rendering == 0 and scoring == 0:
                    break
                try:
                    kind, job, result, error = outbox.get(timeout=0.25)
                except queue.Empty:
                    continue
                if error is not None and isinstance(error, ReverieError) and kind in ("expand", "render"):
                    # This idea's own problem (no weights for its profile, a bad control image):
                    # it fails alone, with what it rendered so far kept; the others go on.
                    slot = job if kind == "expand" else job[0]
                    if kind == "render":
                        rendering -= 1
                    if slot.item.error is None:
                        slot.item.error = str(error)
                        self._fail_item(slot.item.index, slot.item.idea, slot.item.run_id, str(error))
                    pipeline = deque(s for s in pipeline if s.item is not slot.item or (s.sent and s is not slot))
                    continue
                if error is not None:
                    raise _step_error(kind, job, error)
                if kind == "expand":
                    if job in pipeline:
                        job.prompt_id = self.store.add_prompt(job.item.run_id, result, round=job.round)
                        job.specs = self._specs(job, result)
                        self.progress(Event("expanded", {"index": job.item.index, "round": job.round, "source": result.source,
                                                         "prompt": result.prompt}))
                elif kind == "render":
                    slot, (outputs, batch_size) = job[0], result
                    rendering -= 1
                    if slot in pipeline:
                        pipeline.remove(slot)
                    ids = []
                    for out in outputs:
                        rid = self.store.add_render(slot.item.run_id, slot.prompt_id, slot.round, out, batch_size=batch_size)
                        slot.item.done += 1
                        self.renders_now += 1
                        if not out.error:
                            ids.append((rid, str(self.store.home / self._path_of(rid)), out.spec.prompt))
                    self._spend(started, spent_before)
                    if ids:
                        workers["score"].inbox.put((slot.item, ids))
                        scoring += 1
                    self._report_progress(items, started, total, done_before, budget_s, spent_before)
                elif kind == "score":
                    item, scored = job[0], result
                    scoring -= 1
                    for (rid, _, _), s in zip(job[1], scored):
                        self.store.add_scores(rid, s)
                        if s.embedding:
                            self.embeddings[rid] = s.embedding
                        item.best = s.composite if item.best is None else max(item.best, s.composite)
                    self._report_progress(items, started, total, done_before, budget_s, spent_before)
        except BaseException:
            self._stop_workers(workers)
            with self.store.db.conn:
                self.store.db["batches"].update(self.batch_id, {"status": "interrupted"})
            self._spend(started, spent_before)
            raise
        self._stop_workers(workers)
        self._spend(started, spent_before)
        return self._finish(items, stop_reason or "every idea reached its budget", scorer.dedupe_threshold)

    def _stop_workers(self, workers: dict[str, _Worker]) -> None:
        """Stop, then join: queued jobs are dropped, a render stops after its current image."""
        self.stop.set()
        for w in workers.values():
            w.inbox.put(None)
        deadline = time.monotonic() + JOIN_SECONDS
        for w in workers.values():
            w.join(max(0.0, deadline - time.monotonic()))

    def _check_stop(self, event: Event) -> None:
        if self.stop.is_set():
            raise _Stopped()

    def _slot_order(self, items: list[_Item]) -> Iterator[_Slot]:
        rnd = 0
        while True:
            live = [i for i in items if i.error is None and (i.rounds() is None or rnd < i.rounds())]
            if not live:
                return
            # Grouped by profile within a round, so a mixed batch switches models rarely.
            for item in sorted(live, key=lambda i: (i.request.profile, i.index)):
                if item.error is None:  # a failed idea gets no more rounds
                    yield _Slot(item=item, round=rnd)
            rnd += 1

    def _prepare(self, slot: _Slot) -> None:
        """Find the round's prompt if it was committed before (a resumed batch)."""
        rows = list(self.store.db.query("select * from prompts where run_id = ? and round = ? order by id",
                                        [slot.item.run_id, slot.round]))
        if rows:
            p = rows[0]
            slot.prompt_id = p["id"]
            slot.specs = self._specs(slot, Expansion(prompt=p["text"], negative=p["negative"], source=p["source"]))

    def _specs(self, slot: _Slot, expansion: Expansion) -> list[RenderSpec]:
        item = slot.item
        profile = get_profile(item.request.profile)
        return [RenderSpec(prompt=expansion.prompt, negative=expansion.negative if profile.negative else "", seed=seed,
                           width=item.width, height=item.height, steps=item.request.steps or profile.steps,
                           guidance=profile.guidance, profile=profile.name, sampler=profile.sampler, shift=profile.shift,
                           control=item.control)
                for seed in item.seeds(slot.round)]

    def _render_job(self, job):
        from reverie.orchestrator.graph import render_with_retry

        slot, specs = job
        t0 = time.perf_counter()
        if self.first_start is None:
            self.first_start = t0
        try:
            # Engine progress stays on this thread; the coordinator reports per round.
            engine = self._engine or self.studio.engine_for(get_profile(slot.item.request.profile), no_progress)
            # The engine reports each image; _check_stop ends the job there once the batch stops.
            outputs = render_with_retry(engine, specs, self._check_stop)
            # Read after rendering: a retry after out-of-memory may have made the batch smaller.
            return outputs, getattr(engine, "batch_size", None)
        finally:
            self.last_end = time.perf_counter()
            self.busy += self.last_end - t0

    def _path_of(self, render_id: int) -> str:
        return next(self.store.db.query("select path from renders where id = ?", [render_id]))["path"]

    def _spend(self, started: float, spent_before: float) -> None:
        with self.store.db.conn:
            self.store.db["batches"].update(self.batch_id, {"seconds_spent": spent_before + time.monotonic() - started})

    def _report_progress(self, items, started, total, done_before, budget_s, spent_before) -> None:
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
        self.progress(Event("batch_progress", {
            "done": done, "total": total, "images_per_minute": rate, "eta_seconds": eta,
            "best": max(bests) if bests else None,
            "items": [{"index": i.index, "done": i.done, "budget": i.budget, "best": i.best} for i in items]}))

    # -- curation --------------------------------------------------------------------------
    def _finish(self, items: list[_Item], stop_reason: str, dedupe_threshold: float) -> BatchResult:
        from reverie.orchestrator.report import write_report

        results = []
        for item in items:
            kept, dups = keep_diverse(self.store, item.run_id, self.options.keep, self.embeddings,
                                      threshold=dedupe_threshold)
            with self.store.db.conn:
                self.store.db.execute("delete from batch_keeps where item_id = ?", [item.row_id])
                self.store.db["batch_keeps"].insert_all(
                    [{"item_id": item.row_id, "render_id": r.id, "rank": n, "near_duplicate": int(r.id in dups)}
                     for n, r in enumerate(kept, 1)])
                finished = item.budget is not None and item.done >= item.budget
                status = "failed" if item.error else "done" if finished else "stopped"
                if not item.error:  # a failed item's row already holds status and reason
                    self.store.db["batch_items"].update(item.row_id, {"status": status})
                self.store.finish_run(item.run_id, "failed" if item.error else "done", item.error or stop_reason)
            results.append(BatchItemResult(index=item.index, idea=item.idea, run_id=item.run_id, budget=item.budget,
                                           rendered=item.done, kept=kept, near_duplicates=sorted(dups), status=status,
                                           error=item.error))
        opened = {i.index for i in items}
        for it in self.items_in:  # failed before it could start: nothing rendered this time
            if it.index not in opened:
                row = next(self.store.db.query("select * from batch_items where batch_id = ? and idx = ?",
                                               [self.batch_id, it.index]))
                results.append(BatchItemResult(index=it.index, idea=it.idea, run_id=row["run_id"] or "",
                                               budget=row["budget"], rendered=0, kept=[], status="failed",
                                               error=row["error"]))
        results.sort(key=lambda r: r.index)
        report = write_report(self.store, self.batch_id)
        with self.store.db.conn:
            self.store.db["batches"].update(self.batch_id, {"status": "done", "report_path": str(report), "finished": time.time()})
        wall = (self.last_end - self.first_start) if self.first_start is not None and self.last_end is not None else 0.0
        self.progress(Event("batch_finished", {"batch_id": self.batch_id, "report": str(report), "reason": stop_reason,
                                               "renders": self.renders_now}))
        return BatchResult(batch_id=self.batch_id, items=results, report_path=report, stop_reason=stop_reason,
                           home=self.store.home, renders_this_session=self.renders_now, engine_busy_seconds=self.busy,
                           engine_wall_seconds=wall, notices=list(self.studio.notices))


def _step_error(kind: str, job, error: BaseException) -> BaseException:
    """A worker's error as the coordinator raises it: ReverieErrors as they are; anything else
    (an engine that crashed, a broken scorer) as one line naming the step, the idea and what to do."""
    if isinstance(error, (ReverieError, KeyboardInterrupt, SystemExit)):
        return error
    item = job.item if isinstance(job, _Slot) else job[0].item if isinstance(job[0], _Slot) else job[0]
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    step = {"expand": "expanding", "render": "rendering", "score": "scoring"}[kind]
    wrapped = ReverieError(f"{step} idea {item.index + 1} failed ({type(error).__name__}: {first}): everything finished "
                           "is saved; fix the cause and run the same command to continue")
    wrapped.__cause__ = error
    return wrapped


def _score_job(scorer, job):
    from PIL import Image

    item, entries = job
    images = []
    for _, path, _ in entries:
        with Image.open(path) as im:
            images.append(im.convert("RGB"))
    return scorer.score(images, [item.idea] * len(entries), [p for _, _, p in entries])


def run_batch(studio, file: str | Path, options: BatchOptions, progress: ProgressFn = no_progress, **parts: Any) -> BatchResult:
    text, items = read_batch_file(file)
    return BatchRunner(studio, text, items, options, source=str(Path(file).expanduser()), progress=progress, **parts).run()
