"""One core for every way in: batch ideas run the same agent graph as make, over one engine worker."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from reverie import Studio
from reverie.orchestrator import policy
from reverie.orchestrator.worker import EngineWorker, RenderStopped
from reverie.render.fixed import FixedLatencyEngine
from reverie.types import EngineOutput, Event
from tests.conftest import REPO, run_cli
from tests.openai_server import Reply, ScriptedLLM, json_content
from tests.test_agents import FOX as DREAM, REVISED
from tests.test_llm import dreams

FOX = "a fox in the rain"


# -- the policy, alone -------------------------------------------------------------------
def test_stop_reasons_in_order_of_precedence():
    b = policy.Budget(rounds=3, target=0.8, max_renders=10)
    assert policy.stop_reason(b, finished_round=0, history=[0.5], elapsed=0, renders=4) == ""
    assert policy.stop_reason(b, finished_round=0, history=[0.85], elapsed=0, renders=4).startswith("target 0.8 reached")
    assert policy.stop_reason(b, finished_round=1, history=[0.5, 0.6], elapsed=0, renders=10) == "render budget reached (10)"
    assert policy.stop_reason(b, finished_round=2, history=[0.5] * 3, elapsed=0, renders=9) == "round budget reached (3)"
    timed = policy.Budget(rounds=9, max_seconds=5)
    assert policy.stop_reason(timed, finished_round=0, history=[0.1], elapsed=6, renders=4) == "time budget reached (5s)"
    shared = policy.Budget(rounds=9, deadline_passed=True, deadline_label="8 h")
    assert policy.stop_reason(shared, finished_round=0, history=[0.1], elapsed=0, renders=4) == "time budget reached (8 h)"


@pytest.mark.parametrize("name, action, revision, expected", [
    ("revise", "keep", False, policy.RENDER),
    ("explore", "keep", False, policy.EXPLORE),
    ("revise", "revise", True, policy.REVISE),
    ("explore", "revise", True, policy.REVISE),
    ("explore", "revise", False, policy.EXPLORE),  # a revision without a prompt is no revision
    ("revise", "variety", False, policy.VARIETY),
    ("explore", "variety", False, policy.VARIETY),
])
def test_next_step_per_policy(name, action, revision, expected):
    assert policy.next_step(name, action, revision) == expected


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="explore"):
        policy.next_step("greedy", "keep", False)


def test_variety_knobs_turn_up_to_their_caps():
    assert policy.turn_knobs(3.0, 0, profile_shift=3.0) == (5.0, 1)
    assert policy.turn_knobs(6.0, 2, profile_shift=3.0) == (7.0, 2)
    assert policy.turn_knobs(None, 0, profile_shift=None) == (None, 1)  # no shift on this model: blind steps only


# -- the engine worker -----------------------------------------------------------------------
class RecordingEngine(FixedLatencyEngine):
    def __init__(self, latency=0.02):
        super().__init__(latency=latency)
        self.order: list[int] = []

    def render(self, specs, progress=None, on_output=None):
        self.order.append(specs[0].seed)
        return super().render(specs, progress, on_output)


def _spec(seed: int):
    from reverie.types import RenderSpec

    return RenderSpec(prompt="p", seed=seed, width=64, height=64, steps=1, guidance=0.0, profile="z-image-turbo")


def test_worker_serves_the_lowest_round_first_and_one_job_at_a_time():
    engine, worker = RecordingEngine(latency=0.05), EngineWorker()
    try:
        # The first job keeps the engine busy while the rest queue up in a scrambled order.
        first = worker.submit(engine, [_spec(0)], priority=(0, "z", 0))
        jobs = [worker.submit(engine, [_spec(seed)], priority=(rnd, "z", idx))
                for seed, rnd, idx in [(21, 2, 1), (11, 1, 1), (10, 1, 0), (20, 2, 0), (1, 0, 1)]]
        for job in [first, *jobs]:
            assert job.done.wait(30) and job.error is None
        assert engine.order == [0, 1, 10, 11, 20, 21]
        assert 0 < worker.busy_fraction <= 1.0
    finally:
        worker.close()


def test_a_cancelled_job_stops_between_images_and_keeps_what_it_handed_on():
    engine, worker = FixedLatencyEngine(latency=0.05), EngineWorker()
    got: list[EngineOutput] = []
    try:
        job = worker.submit(engine, [_spec(s) for s in range(40)], on_output=got.append)
        while len(got) < 3:
            time.sleep(0.01)
        job.cancel()
        assert job.done.wait(10)
        assert isinstance(job.error, RenderStopped)
        assert 3 <= len(got) < 40
    finally:
        worker.close()


# -- batch ideas run the graph ---------------------------------------------------------------
def _ideas(tmp_path: Path, *ideas: str) -> Path:
    f = tmp_path / "ideas.txt"
    f.write_text("\n".join(ideas) + "\n")
    return f


def _director(body: dict) -> Reply:
    """Dreamer requests get an expansion; the art director (the critic) always asks for a revision."""
    if body["messages"][0]["content"].startswith("You are the art director"):
        assert json.loads(body["messages"][1]["content"])["images"]
        return Reply(json_content({"action": "revise", "reason": "The fox is too small.", "prompt": REVISED}))
    return Reply(dreams(DREAM))


def test_a_batch_critic_revision_becomes_a_child_prompt(tmp_path):
    file = _ideas(tmp_path, FOX, FOX + " at dawn")
    with ScriptedLLM(responder=_director) as llm, \
            Studio(home=tmp_path / "home", engine=FixedLatencyEngine(latency=0.0), scorer="heuristic",
                   llm_url=llm.url) as studio:
        result = studio.batch(file, per_prompt=4, n=2, keep=2, megapixels=0.02)
        for item in result.items:
            prompts = studio.store.prompts(item.run_id)
            first, second = prompts
            assert first["parent_id"] is None and first["source"] == "dreamer"
            assert second["source"] == "critic" and second["text"] == REVISED and second["parent_id"] == first["id"]
            assert item.rendered == 4
            calls = studio.store.llm_calls(item.run_id)
            assert [c["purpose"] for c in calls] == ["expand", "critique"]  # each idea's own calls, filed under its run


def test_a_batch_target_stops_an_idea_when_reached(tmp_path):
    file = _ideas(tmp_path, FOX, "a red car at night")
    with Studio(home=tmp_path / "home", engine=FixedLatencyEngine(latency=0.0), scorer="heuristic") as studio:
        result = studio.batch(file, per_prompt=12, keep=2, megapixels=0.02, target=0.01)
        for item in result.items:
            assert item.rendered == 4 and item.status == "done"  # one round of 4, not 12
            assert studio.store.get_run(item.run_id)["stop_reason"].startswith("target 0.01 reached")
        assert result.stop_reason == "every idea reached its target"


class SameImageEngine(FixedLatencyEngine):
    """Every seed gives the same picture: near-duplicates, the case the variety knobs are for."""

    def render(self, specs, progress=None, on_output=None):
        outputs = []
        for spec in specs:
            out = EngineOutput(spec=spec, image=self.image_for(spec.with_(seed=0, shift=None, blind_steps=0)),
                               engine=self.name, engine_version=self.version, seconds=0.0)
            if on_output:
                on_output(out)
            outputs.append(out)
        return outputs


def test_the_variety_knobs_turn_for_near_duplicate_batch_ideas(tmp_path):
    file = _ideas(tmp_path, FOX)
    events: list[Event] = []
    with Studio(home=tmp_path / "home", engine=SameImageEngine(latency=0.0), scorer="heuristic") as studio:
        result = studio.batch(file, per_prompt=8, n=4, keep=2, megapixels=0.02, progress=events.append)
        rows = studio.store.render_rows(result.items[0].run_id)
    specs = [json.loads(r["spec_json"]) for r in rows]
    first, second = [s for s, r in zip(specs, rows) if r["round"] == 0], [s for s, r in zip(specs, rows) if r["round"] == 1]
    assert len(first) == len(second) == 4
    assert all(s["blind_steps"] == 0 and s["shift"] == 3.0 for s in first)
    assert all(s["blind_steps"] == 1 and s["shift"] == 5.0 for s in second)
    judged = [e.data for e in events if e.kind == "judged"]
    assert judged[0]["decision"] == "variety" and judged[0]["similarity"] > 0.9


def test_a_batch_budget_that_is_not_a_multiple_of_the_round_is_exact(tmp_path):
    file = _ideas(tmp_path, FOX, "a red car at night", "a boat on a lake")
    with Studio(home=tmp_path / "home", engine=FixedLatencyEngine(latency=0.0), scorer="heuristic") as studio:
        result = studio.batch(file, per_prompt=6, keep=2, megapixels=0.02)
        assert [i.rendered for i in result.items] == [6, 6, 6]
        rows = [studio.store.render_rows(i.run_id) for i in result.items]
    assert [[r["round"] for r in rs] for rs in rows] == [[0, 0, 0, 0, 1, 1]] * 3


def test_cli_batch_takes_makes_loop_options(tmp_path):
    file = _ideas(tmp_path, FOX)
    r = run_cli("batch", str(file), "--per-prompt", "9", "--n", "3", "--rounds", "2", "--target", "0.99",
                "--keep", "1", "--megapixels", "0.02", "--engine", "fixed", "--scorer", "heuristic", "--json",
                home=tmp_path / "home")
    assert r.returncode == 0, r.stderr
    item = json.loads(r.stdout)["items"][0]
    assert item["rendered"] == 6  # two rounds of three: --rounds bounds it before the budget of 9
    bad = run_cli("batch", str(file), "--target", "5", "--engine", "fixed", home=tmp_path / "home")
    assert bad.returncode == 2 and "between 0 and 1" in bad.stderr and "Traceback" not in bad.stderr


# -- the layers ------------------------------------------------------------------------------
SQL = re.compile(r"""(\.query\(|\.execute\(|\bdb\[["']|\binsert_all\(|"select |'select )""", re.IGNORECASE)


def test_no_sql_outside_the_store():
    offenders = []
    for path in (REPO / "reverie").rglob("*.py"):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith("reverie/store/"):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if SQL.search(line) and "PRAGMA" not in line:
                offenders.append(f"{rel}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


POISON_RUN = r"""
import os, signal, sys
from reverie import Studio
from reverie.render.fixed import FixedLatencyEngine


class DiesOnPoison(FixedLatencyEngine):
    def render(self, specs, progress=None, on_output=None):
        if any("poison" in s.prompt.lower() for s in specs):
            os.kill(os.getpid(), signal.SIGSEGV)  # a segfault: no Python cleanup, a record in the fault log
        return super().render(specs, progress, on_output)


with Studio(home=sys.argv[2], engine=DiesOnPoison(latency=0.0), scorer="heuristic") as studio:
    result = studio.batch(sys.argv[1], per_prompt=4, keep=1, megapixels=0.02, retry_failed=len(sys.argv) > 3)
    print([(i.status, i.rendered, i.error) for i in result.items])
"""


def test_an_idea_that_crashes_the_process_twice_is_set_aside(tmp_path):
    import signal
    import subprocess
    import sys

    file = _ideas(tmp_path, FOX, "a poison apple on a table", "a boat on a lake")
    home = tmp_path / "home"

    def run(*extra):
        return subprocess.run([sys.executable, "-c", POISON_RUN, str(file), str(home), *extra], capture_output=True,
                              text=True, timeout=300, cwd=REPO)

    assert run().returncode == -signal.SIGSEGV  # the first crash: the poisoned round was in the engine
    assert run().returncode == -signal.SIGSEGV  # tried once more: the second crash in a row
    third = run()
    assert third.returncode == 0, third.stderr
    statuses = eval(third.stdout.strip().splitlines()[-1])
    assert [s for s, _, _ in statuses] == ["done", "failed", "done"]
    assert [n for _, n, _ in statuses][0::2] == [4, 4]
    assert "crashed the process twice" in statuses[1][2] and "--retry-failed" in statuses[1][2]
    assert "segmentation fault" in statuses[1][2]  # the evidence: faulthandler's record, named
    again = run()  # the same command leaves it aside and exits cleanly
    assert again.returncode == 0 and eval(again.stdout.strip().splitlines()[-1])[1][0] == "failed"
    assert run("--retry-failed").returncode == -signal.SIGSEGV  # --retry-failed really tries it again


def test_the_first_line_says_the_engine_is_loading(tmp_path):
    r = run_cli("make", FOX, "--engine", "fixed", "--n", "1", "--rounds", "1", "--megapixels", "0.02",
                home=tmp_path / "home")
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines()[0] == "reverie: loading the engine for z-image-turbo…"


@pytest.mark.parametrize("option, value, fragment", [
    ("--target", "5", "between 0 and 1"),
    ("--n", "0", "n must be between 1"),
    ("--rounds", "0", "rounds must be between 1"),
])
def test_bad_batch_loop_options_are_one_line_before_any_idea_runs(tmp_path, option, value, fragment):
    file = _ideas(tmp_path, FOX)
    r = run_cli("batch", str(file), option, value, "--engine", "fixed", home=tmp_path / "home")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert [ln for ln in r.stderr.splitlines() if ln.strip()] == [next(ln for ln in r.stderr.splitlines() if ln.startswith("error:"))]
    assert fragment in r.stderr and r.stdout == ""  # no summary, no report: nothing was started
    assert not (tmp_path / "home" / "reports").exists()
