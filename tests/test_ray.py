"""Scale out on Ray (issue 12): engine workers as Ray actors on one local Ray instance.

One `ray.init(num_cpus=2)` serves the whole module (Ray takes seconds to start on two cores);
each test's studio starts its own two CPU actors on it and kills them when it closes.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from reverie.orchestrator.studio import Studio
from reverie.render.fixed import FixedLatencyEngine
from reverie.types import Notice, ReverieError
from tests.conftest import REPO, run_cli

IDEAS = ["a fox in the rain", "a red car at night", "a knight in a forest"]


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


def _ideas(tmp_path: Path) -> Path:
    file = tmp_path / "ideas.txt"
    file.write_text("\n".join(IDEAS) + "\n")
    return file


def _check_store(home: Path, result, budget: int) -> list[dict]:
    """Exact counts per idea, no spec rendered twice, every file's bytes matching its stored hash."""
    rows = []
    with sqlite3.connect(home / "reverie.db") as conn:
        conn.row_factory = sqlite3.Row
        for item in result.items:
            run = [dict(r) for r in conn.execute("select * from renders where run_id = ?", [item.run_id])]
            assert item.rendered == budget and len(run) == budget
            assert all(r["status"] == "ok" for r in run)
            assert len({r["spec_sha"] for r in run}) == budget and len({r["seed"] for r in run}) == budget
            rows += run
    for r in rows:
        assert hashlib.sha256((home / r["path"]).read_bytes()).hexdigest() == r["sha256"]
    assert len(list((home / "images").rglob("*.png"))) == len(rows)  # no stray file from a seed rendered twice
    return rows


def test_a_three_idea_batch_renders_its_budget_on_two_actors_and_names_the_worker(ray_local, home, tmp_path):
    with Studio(home=home, engine="tiny", scorer="heuristic", ray="local", workers=2,
                engine_options={"batch_size": 1}) as studio:
        names = {w["name"] for w in studio.worker.workers}
        assert len(names) == 2 and all(n.startswith("ray node ") for n in names)
        result = studio.batch(_ideas(tmp_path), per_prompt=4, n=2, keep=2, megapixels=0.01)
    rows = _check_store(home, result, budget=4)
    assert {r["worker"] for r in rows} <= names
    assert len({r["worker"] for r in rows}) == 2  # one round's seeds go to whichever actor is free: both work

    # The worker is shown wherever a render is: show, lineage and the contact sheet.
    some = rows[0]
    shown = run_cli("show", some["run_id"], home=home)
    assert shown.returncode == 0, shown.stderr
    assert f"on {some['worker']}" in shown.stdout
    lineage = run_cli("lineage", str(some["id"]), home=home)
    assert lineage.returncode == 0, lineage.stderr
    assert f"on {some['worker']}" in lineage.stdout
    html = Path(result.report_path).read_text()
    assert html.count("· on ray node ") == sum(len(i.kept) for i in result.items)


def test_workers_beyond_the_cluster_are_refused_in_one_line(ray_local, home):
    with pytest.raises(ReverieError) as e:
        Studio(home=home, engine="tiny", ray="local", workers=3)
    assert "--workers 3" in str(e.value) and "2 CPU" in str(e.value) and "\n" not in str(e.value)


class DiesOnPoison(FixedLatencyEngine):
    """The fixed engine, but a prompt with "poison" in it kills the process rendering it (a segfault,
    an out-of-memory kill): on Ray, the actor's process."""

    batch_size = 4  # a whole round in one call

    def render(self, specs, progress=None, on_output=None):
        if any("poison" in s.prompt.lower() for s in specs):
            os.kill(os.getpid(), signal.SIGKILL)
        return super().render(specs, progress, on_output)


def test_an_engine_object_goes_to_the_actors(ray_local, home):
    with Studio(home=home, engine=FixedLatencyEngine(latency=0.0), scorer="heuristic", ray="local",
                workers=2) as studio:
        result = studio.make("a fox in the rain", n=4, rounds=1, megapixels=0.01, seed=1)
        names = {w["name"] for w in studio.worker.workers}
    assert len(result.renders) == 4
    with sqlite3.connect(home / "reverie.db") as conn:
        assert {w for (w,) in conn.execute("select worker from renders")} <= names


@pytest.mark.slow
def test_killing_an_actor_mid_batch_gives_its_seeds_to_the_other(ray_local, home, tmp_path):
    """Done-when: SIGKILL one actor's process mid-batch; exact counts, no duplicates, every file hashed."""
    events = []
    killed: dict = {}
    rendered = 0
    studio = Studio(home=home, engine="tiny", scorer="heuristic", ray="local", workers=2,
                    engine_options={"batch_size": 1})

    def progress(event):
        nonlocal rendered
        events.append(event)
        if event.kind == "batch_progress":
            rendered = event.data["done"]
            if rendered >= 3 and not killed:  # both actors are rendering: one dies with a seed in hand
                killed.update(studio.worker.workers[0])
                os.kill(killed["pid"], signal.SIGKILL)

    with studio:
        result = studio.batch(_ideas(tmp_path), per_prompt=6, n=3, keep=2, megapixels=0.01, progress=progress)
        after = studio.worker.workers
    assert killed and 3 <= rendered
    rows = _check_store(home, result, budget=6)
    assert result.renders_this_session == 18 and result.failed == []
    notices = [e.data["message"] for e in events if e.kind == "notice"]
    assert any(killed["name"] in m and "died" in m for m in notices), notices
    # Ray restarted it (max_restarts) in a new process; both actors rendered.
    assert {w["name"] for w in after} == {r["worker"] for r in rows}


def _count_ok(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return conn.execute("select count(*) from renders where status = 'ok'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


@pytest.mark.slow
def test_a_round_that_kills_two_actors_fails_its_idea_alone(ray_local, home, tmp_path):
    """Seeds that were rendering on two actors that died are not tried a third time: that idea
    fails naming them, Ray restarts the actors and the other ideas end with exact counts."""
    file = tmp_path / "ideas.txt"
    file.write_text("a fox in the rain\na poison apple on a table\na boat on a lake\n")
    events = []
    with Studio(home=home, engine=DiesOnPoison(latency=0.0), scorer="heuristic", ray="local", workers=2) as studio:
        result = studio.batch(file, per_prompt=8, keep=1, megapixels=0.01, progress=events.append)
    assert [i.status for i in result.items] == ["done", "failed", "done"], [(i.status, i.error) for i in result.items]
    assert [i.rendered for i in result.items] == [8, 0, 8]
    assert "were rendering on 2 Ray workers that died" in result.items[1].error
    died = [e.message for e in events if isinstance(e, Notice) and " died (" in e.message]
    # At least the two deaths that fail it; how the poisoned seeds were chunked between actors can
    # make a restarted actor die on one more of them before every one has seen two deaths.
    assert len(died) >= 2 and all("Ray restarts it" in m for m in died), died


@pytest.mark.slow
def test_a_killed_head_resumes_with_the_same_command(home, tmp_path):
    """The head process SIGKILLed mid-batch (its local Ray goes with it); the same command finishes the batch."""
    import json
    import time

    args = ["batch", str(_ideas(tmp_path)), "--per-prompt", "4", "--n", "2", "--keep", "2", "--megapixels", "0.01",
            "--engine", "tiny", "--scorer", "heuristic", "--batch-size", "1", "--ray", "local", "--workers", "2",
            "--json", "--home", str(home)]
    exe = Path(sys.executable).with_name("reverie")
    proc = subprocess.Popen([str(exe), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "NO_COLOR": "1"}, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while _count_ok(home / "reverie.db") < 3:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no renders appeared"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)  # the head and the Ray processes it started: a machine gone
    finally:
        proc.wait(timeout=30)
    before = _count_ok(home / "reverie.db")
    assert 3 <= before < 12
    # A PNG written just before the kill whose row never committed is adopted on resume, not rendered again.
    files_before = len(list((home / "images").rglob("*.png")))

    r = run_cli(*args[:-2], home=home)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert [i["rendered"] for i in result["items"]] == [4, 4, 4]
    assert result["renders_this_session"] == 12 - files_before  # nothing redone, nothing lost
    with sqlite3.connect(home / "reverie.db") as conn:
        assert conn.execute("select count(*), count(distinct run_id || spec_sha) from renders where status = 'ok'"
                            ).fetchone() == (12, 12)
    assert len(list((home / "images").rglob("*.png"))) == 12


# -- Ray stays optional ------------------------------------------------------------------------

def _without_ray(tmp_path: Path) -> dict:
    """An environment where `import ray` fails, as on a machine without the extra."""
    shadow = tmp_path / "no_ray"
    (shadow / "ray").mkdir(parents=True)
    (shadow / "ray" / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    return {"PYTHONPATH": str(shadow)}


def test_reverie_imports_without_ray(tmp_path):
    code = ("import sys, reverie.cli, reverie.orchestrator.studio, reverie.orchestrator.batch, "
            "reverie.orchestrator.ray_pool; assert 'ray' not in sys.modules, 'ray imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, **_without_ray(tmp_path)}, timeout=120)
    assert r.returncode == 0, r.stderr


def test_ray_without_the_extra_says_how_to_install_it(tmp_path):
    file = _ideas(tmp_path)
    r = run_cli("batch", str(file), "--ray", "local", home=tmp_path / "home", env=_without_ray(tmp_path))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == ["error: Ray is not installed: pip install 'reverie[ray]'"]


@pytest.mark.parametrize("args, fragment", [
    (["--ray", "somewhere"], "use local"),
    (["--workers", "2"], "pass --ray local"),
    (["--ray", "local", "--workers", "0"], "--workers must be 1 or more"),
    (["--ray", "local", "--comfy-url", "http://127.0.0.1:8188"], "--comfy-url once per server"),
])
def test_bad_ray_options_are_one_line(tmp_path, args, fragment):
    r = run_cli("batch", str(_ideas(tmp_path)), *args, home=tmp_path / "home")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], r.stderr


@pytest.mark.slow
def test_bench_prints_throughput_for_one_and_two_actors_and_their_ratio():
    r = subprocess.run([sys.executable, str(REPO / "bench" / "bench_ray.py"), "--ideas", "2", "--per-prompt", "4",
                        "--latency", "0.02", "--megapixels", "0.01"],
                       capture_output=True, text=True, timeout=240, cwd=REPO)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [ln.split(":")[0] for ln in lines[:2]] == ["1 actor(s)", "2 actor(s)"]
    assert all("images/s" in ln and "head CPU" in ln for ln in lines[:2])
    ratio = [ln for ln in lines if ln.startswith("throughput ratio 2 actors / 1 actor:")]
    assert ratio and float(ratio[0].split(":")[1].split("x")[0]) > 0


def _runs(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db, timeout=10) as conn:
        return conn.execute("select id, status from runs").fetchall()


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_a_ray_batch_and_leaves_its_runs_interrupted(home, tmp_path, signum):
    """Ctrl-C or a SIGTERM (a scheduler, systemd) mid-batch: the head stops the runs between
    images, marks them interrupted, stops the actors and Ray, and says so in one line; Ray's
    own C++ signal handler (a stack dump, an abort) never gets the signal."""
    import time

    args = ["batch", str(_ideas(tmp_path)), "--per-prompt", "300", "--n", "4", "--megapixels", "0.01",
            "--engine", "fixed", "--scorer", "heuristic", "--ray", "local", "--workers", "2", "--home", str(home)]
    exe = Path(sys.executable).with_name("reverie")
    proc = subprocess.Popen([str(exe), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "NO_COLOR": "1"}, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while _count_ok(home / "reverie.db") < 4:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no renders appeared"
            time.sleep(0.2)
        proc.send_signal(signum)
        # A hang guard, not a timing: before the fix a SIGINT could wait out the 60 s join.
        _, stderr = proc.communicate(timeout=50)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    stderr = stderr.decode()
    assert proc.returncode == 130, stderr
    assert "interrupted: everything rendered so far is saved" in stderr
    for noise in ("*** SIG", "logging.cc", "PC: @", "Traceback", "(raylet)"):
        assert noise not in stderr, stderr
    runs = _runs(home / "reverie.db")
    assert len(runs) == 3 and {status for _, status in runs} == {"interrupted"}, runs
    assert _count_ok(home / "reverie.db") < 900


def test_a_cancelled_job_does_not_wait_for_the_batch_its_actor_renders(ray_local, home):
    """A stop (Ctrl-C, a batch stopping) while an actor renders a long batch ends the job at once,
    and closing the studio stops the actors instead of waiting for them."""
    from reverie.orchestrator.worker import RenderStopped
    from reverie.types import RenderSpec

    slow = FixedLatencyEngine(latency=600.0)  # an image that would outlast every wait below
    specs = [RenderSpec(prompt="a fox", seed=s, width=32, height=32, steps=1, guidance=0.0, profile="z-image-turbo")
             for s in range(2)]
    with Studio(home=home, engine=slow, scorer="heuristic", ray="local", workers=2) as studio:
        job = studio.worker.submit(slow, specs)
        import time

        deadline = time.monotonic() + 60
        while job.pending and time.monotonic() < deadline:  # both seeds handed to the actors
            time.sleep(0.05)
        assert not job.pending
        job.cancel()
        assert job.done.wait(60)  # a hang guard: the actors' images take 600 s
        assert isinstance(job.error, RenderStopped)
