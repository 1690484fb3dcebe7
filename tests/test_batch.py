"""Batch: file parsing, fair scheduling, resume after SIGKILL of the real CLI, diverse keep, bench."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reverie.orchestrator.batch import BatchOptions, make_batch_id, parse_batch_text
from reverie.orchestrator.curation import curate
from reverie.orchestrator.studio import Studio
from reverie.types import ReverieError
from tests.conftest import REPO, run_cli

IDEAS = ["a fox in the rain", "a red car at night", "a knight in a forest", "a cat on a windowsill", "a boat on a lake"]


def test_text_file_skips_blank_lines_and_comments():
    items = parse_batch_text("# my night\n\na fox in the rain\n   \n# not this\na red car\n")
    assert [(i.index, i.idea) for i in items] == [(0, "a fox in the rain"), (1, "a red car")]


def test_jsonl_items_carry_overrides(tmp_path):
    ref = tmp_path / "ref.png"
    from PIL import Image

    Image.new("RGB", (32, 32), "white").save(ref)
    items = parse_batch_text(
        '{"idea": "a fox", "n": 6, "aspect": "2:3", "profile": "sdxl"}\n'
        f'{{"idea": "a dancer", "reference": "{ref}", "control": "pose"}}\n'
        "a plain line mixes in\n"
    )
    assert (items[0].n, items[0].aspect, items[0].profile) == (6, "2:3", "sdxl")
    assert items[1].references[0].control == "pose" and items[1].references[0].path == str(ref.resolve())
    assert items[2].idea == "a plain line mixes in"


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "has no ideas"),
        ("# only a comment\n", "has no ideas"),
        ('{"idea": "x", "n": 0}\n', '"n" must be a positive'),
        ('{"idea": "x", "colour": "red"}\n', "unknown field(s) colour"),
        ('{"idea": "x", "reference": "/nope/missing.png"}\n', "does not exist"),
        ('{"idea": "x"\n', "not valid JSON"),
        ('{"prompt": "x"}\n', 'needs an "idea" string'),
    ],
)
def test_bad_batch_files_say_how_to_fix_them(text, fragment):
    with pytest.raises(ReverieError, match=None) as e:
        parse_batch_text(text, source="ideas.txt")
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_batch_identity_follows_content_and_options():
    a = make_batch_id("a fox\n", BatchOptions(keep=2))
    assert a == make_batch_id("a fox\n", BatchOptions(keep=2))
    assert a != make_batch_id("a fox\n", BatchOptions(keep=3))
    assert a != make_batch_id("a cat\n", BatchOptions(keep=2))


def test_cli_rejects_missing_file_in_one_line(tmp_path):
    home = tmp_path / "home"
    r = run_cli("batch", str(home / "nope.txt"), home=home)
    assert r.returncode == 2
    assert "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_round_robin_spreads_a_time_budget_fairly(tmp_path):
    home = tmp_path / "home"  # the fixed engine needs no tiny weights
    """With an unlimited per-idea budget, rounds alternate between ideas until time is up."""
    from reverie.render.fixed import FixedLatencyEngine

    file = tmp_path / "ideas.txt"
    file.write_text("a fox in the rain\na red car at night\na boat on a lake\n")
    events = []
    with Studio(home=home, engine=FixedLatencyEngine(latency=0.05), scorer="heuristic") as studio:
        result = studio.batch(file, hours=0.0008, keep=2, megapixels=0.02, progress=events.append)  # about 3 seconds
    done = [i.rendered for i in result.items]
    assert result.stop_reason.startswith("time budget reached")
    assert min(done) >= 4 and max(done) - min(done) <= 4, done  # whole rounds of 4, never more than one apart
    assert all(len(i.kept) == 2 for i in result.items)
    kinds = {e.kind for e in events}
    assert {"batch_started", "batch_progress", "batch_finished"} <= kinds
    progress = [e for e in events if e.kind == "batch_progress"][-1].data
    assert progress["images_per_minute"] > 0 and progress["best"] is not None


def test_keep_prefers_distinct_images_and_fills_with_marked_near_duplicates(tmp_path):
    home = tmp_path / "home"  # the fixed engine needs no tiny weights
    from reverie.render.fixed import FixedLatencyEngine

    file = tmp_path / "ideas.txt"
    file.write_text("a fox in the rain\n")
    with Studio(home=home, engine=FixedLatencyEngine(latency=0.0), scorer="heuristic") as studio:
        result = studio.batch(file, per_prompt=3, keep=3, megapixels=0.02)
        run_id = result.items[0].run_id
        curated = curate(studio.store, run_id, 3, threshold=0.95, fill=True)
        assert len(curated.renders) == 3 and not curated.near_duplicates  # three seeds of seeded noise are all distinct
        # Two identical pixel signatures: the second is a near-duplicate, and only fills the set.
        renders = sorted(studio.store.renders(run_id), key=lambda r: (-r.scores.composite, r.id))
        same = {renders[0].id: (1.0, 0.0), renders[1].id: (1.0, 0.0), renders[2].id: (0.0, 1.0)}
        curated = curate(studio.store, run_id, 2, threshold=0.95, signatures=same, fill=True)
        assert [r.id for r in curated.renders] == [renders[0].id, renders[2].id] and not curated.near_duplicates
        curated = curate(studio.store, run_id, 3, threshold=0.95, signatures=same, fill=True)
        assert [r.id for r in curated.renders] == [r.id for r in renders]
        assert curated.near_duplicates == {renders[1].id}


def _count_renders(db_path: Path) -> int:
    if not db_path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("select count(*) from renders").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def screenshot(html: Path, png: Path, tmp_path: Path) -> None:
    subprocess.run(
        ["/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'chromium'}",
         f"--screenshot={png}", "--window-size=1280,1600", html.as_uri()],
        check=True, capture_output=True, timeout=120,
    )


def check_report_renders(report: Path, tmp_path: Path) -> None:
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("/usr/bin/chromium is missing: apt-get install -y chromium to check the report renders")
    png = Path(os.environ.get("REVERIE_REPORT_SHOT", tmp_path / "report.png"))  # set it to keep the picture
    screenshot(report, png, tmp_path)
    from PIL import Image

    with Image.open(png) as im:
        assert im.size == (1280, 1600)
        colours = im.convert("RGB").resize((64, 100)).getcolors(64 * 100)
        assert colours is not None and len(colours) > 50  # thumbnails drawn, not a blank page


def test_interrupted_batch_resumes_where_it_stopped(tmp_path):
    home = tmp_path / "home"  # the fixed engine needs no tiny weights
    """The Python API: stopped by Ctrl-C after some renders, the same call finishes the rest."""
    from reverie.render.fixed import FixedLatencyEngine

    file = tmp_path / "ideas.txt"
    file.write_text("\n".join(IDEAS) + "\n")
    seen = []

    def stop_after_six(event):
        if event.kind == "batch_progress" and event.data["done"] >= 6:
            raise KeyboardInterrupt

    with Studio(home=home, engine=FixedLatencyEngine(latency=0.01), scorer="heuristic") as studio:
        with pytest.raises(KeyboardInterrupt):
            studio.batch(file, per_prompt=3, keep=2, megapixels=0.02, progress=stop_after_six)
        first = {r["run_id"]: r["n"] for r in studio.store.db.query(
            "select run_id, count(*) as n from renders group by run_id")}
        # Ideas render on their own threads while this thread reads their events, so on a fast
        # machine every render can be in before the Ctrl-C lands; the resume must hold either way.
        assert 6 <= sum(first.values()) <= 15
        assert [r["status"] for r in studio.store.db.query("select status from batches")] == ["interrupted"]
        result = studio.batch(file, per_prompt=3, keep=2, megapixels=0.02, progress=seen.append)
        assert result.renders_this_session == 15 - sum(first.values())
        assert seen[0].kind == "batch_started" and seen[0].data["resumed"]
        assert [len(i.kept) for i in result.items] == [2] * 5 and [i.rendered for i in result.items] == [3] * 5
        seeds = [r["seed"] for r in studio.store.db.query("select seed from renders")]
        assert len(seeds) == len(set(seeds)) == 15
        # Once more after the end: nothing is rendered again, the same images are kept.
        again = studio.batch(file, per_prompt=3, keep=2, megapixels=0.02)
        assert again.renders_this_session == 0 and again.batch_id == result.batch_id
        assert [[r.id for r in i.kept] for i in again.items] == [[r.id for r in i.kept] for i in result.items]
    check_report_renders(result.report_path, tmp_path)


@pytest.mark.slow
def test_batch_killed_and_resumed_keeps_k_per_idea_and_report_renders(home, tmp_path):
    """Done-when: 5 ideas on the tiny engine, SIGKILLed mid-way, resumed by the same command."""
    file = tmp_path / "ideas.txt"
    file.write_text("# overnight\n" + "\n".join(IDEAS) + "\n")
    args = ["batch", str(file), "--per-prompt", "3", "--keep", "2", "--megapixels", "0.02", "--engine", "tiny", "--scorer", "heuristic", "--json"]
    exe = Path(sys.executable).with_name("reverie")
    env = {**os.environ, "NO_COLOR": "1"}
    proc = subprocess.Popen([str(exe), *args, "--home", str(home)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 240
        while _count_renders(home / "reverie.db") < 4:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no renders appeared"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    interrupted_at = _count_renders(home / "reverie.db")
    assert 4 <= interrupted_at < 15

    r = run_cli(*args, home=home)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert [i["idea"] for i in result["items"]] == IDEAS
    assert all(len(i["kept"]) == 2 and i["rendered"] == 3 for i in result["items"])
    assert result["renders_this_session"] == 15 - interrupted_at  # nothing redone, nothing lost

    with sqlite3.connect(home / "reverie.db") as conn:
        assert conn.execute("select count(*) from renders where status = 'ok'").fetchone()[0] == 15
        assert conn.execute("select count(*) from batch_keeps").fetchone()[0] == 10
        assert conn.execute("select count(*) from scores where name = 'composite'").fetchone()[0] == 15
        assert conn.execute("select status from batches").fetchall() == [("done",)]

    report = Path(result["report"])
    assert report.parent == home / "reports"
    html = report.read_text()
    assert html.count("data:image/jpeg;base64,") == 10 and "reverie lineage" in html
    for item in result["items"]:
        for kept in item["kept"]:
            assert os.path.relpath(kept["path"], report.parent) in html and str(kept["seed"]) in html
    check_report_renders(report, tmp_path)


def test_the_summary_names_each_kept_image_by_its_whole_path_in_80_columns(home, tmp_path):
    file = tmp_path / "ideas.txt"
    long_idea = "a fox in the rain at dusk over a long harbour full of small red fishing boats and gulls"
    file.write_text(f"{long_idea}\na boat on a lake\n")
    args = ["batch", str(file), "--per-prompt", "3", "--keep", "2", "--megapixels", "0.02", "--engine", "fixed",
            "--scorer", "heuristic", "--local"]
    r = run_cli(*args, home=home, env={"COLUMNS": "80"})
    assert r.returncode == 0, r.stderr
    again = run_cli(*args, "--json", home=home)  # the same batch, done: its kept images, as JSON
    assert again.returncode == 0, again.stderr
    items = json.loads(again.stdout)["items"]
    lines = r.stdout.splitlines()
    assert lines[0].startswith("1. a fox in the rain") and lines[0].endswith("kept 2 of 3, scored by heuristic")
    for item in items:
        assert len(item["kept"]) == 2
        for k, kept in enumerate(item["kept"]):
            line = next(line for line in lines if line.endswith(kept["path"]))  # whole, on one line
            assert line.split()[:2] == [f"{item['index'] + 1}.{k + 1}", f"{kept['score']:.3f}"]
            assert Path(kept["path"]).is_file()
    assert all(len(line) <= 80 for line in lines if "/" not in line), r.stdout


def test_bench_prints_engine_busy_fraction():
    r = subprocess.run([sys.executable, str(REPO / "bench" / "bench_batch.py"), "--ideas", "2", "--per-prompt", "4",
                        "--latency", "0.01", "--expand-latency", "0.02", "--score-latency", "0.005"],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("engine busy fraction:")]
    assert line and 0.0 < float(line[0].split()[3]) <= 1.0


def test_a_second_copy_of_a_running_batch_is_refused(tmp_path):
    from reverie.store.locks import RunLock

    file = tmp_path / "ideas.txt"
    file.write_text("a fox in the rain\n")
    with Studio(home=tmp_path / "home", engine="fixed", scorer="heuristic") as studio:
        batch_id = make_batch_id(file.read_text(), BatchOptions(per_prompt=1, keep=1, engine="fixed", megapixels=0.02))
        held = RunLock(studio.home, f"batch-{batch_id}")
        assert held.acquire()  # as the first process would
        try:
            with pytest.raises(ReverieError, match="already running in another process"):
                studio.batch(file, per_prompt=1, keep=1, megapixels=0.02)
        finally:
            held.release()
        assert studio.batch(file, per_prompt=1, keep=1, megapixels=0.02).items[0].rendered == 1


def test_batch_takes_makes_engine_options(home, tmp_path):
    """`batch` shares make's engine flags: --batch-size reaches the engine (recorded in each PNG),
    and a bad value is one line."""
    from reverie.store.pngmeta import read_reverie_meta

    file = tmp_path / "ideas.txt"
    file.write_text("a fox in the rain\n")
    args = ["batch", str(file), "--per-prompt", "2", "--keep", "2", "--megapixels", "0.02", "--engine", "tiny",
            "--scorer", "heuristic"]
    done = run_cli(*args, "--batch-size", "2", "--device", "cpu", "--json", home=home)
    assert done.returncode == 0, done.stderr
    kept = json.loads(done.stdout)["items"][0]["kept"]
    assert kept and all(read_reverie_meta(k["path"])["batch_size"] == 2 for k in kept)
    bad = run_cli(*args, "--batch-size", "0", home=home)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert [line for line in bad.stderr.splitlines() if line.startswith("error:")] == ["error: batch size must be at least 1 (got 0)"]
    mixed = run_cli(*args, "--comfy-url", "http://127.0.0.1:1", home=home)
    assert mixed.returncode == 2 and mixed.stderr.count("error:") == 1 and "--engine comfyui" in mixed.stderr


DIES_ON_SECOND_CALL = """
import sys
import typer
from reverie.cli.common import friendly
from reverie.orchestrator.studio import Studio
from reverie.render.tiny import TinyEngine


class DiesOnSecondCall(TinyEngine):
    calls = 0

    def render(self, specs, progress=None, on_output=None):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("device lost")
        return super().render(specs, progress, on_output)


@friendly
def main(file, home):
    with Studio(home=home, scorer="heuristic", engine=DiesOnSecondCall(models_dir=home + "/models", batch_size=1)) as studio:
        studio.batch(file, per_prompt=4, keep=2, megapixels=0.02)


try:
    main(sys.argv[1], sys.argv[2])
except typer.Exit as e:
    sys.exit(e.exit_code)
"""


def test_an_engine_dying_mid_batch_is_one_line_and_keeps_what_was_rendered(home, tmp_path):
    """The real tiny engine, failing on its second round while another round waits: the workers
    are stopped and joined (no 'terminate called without an active exception', exit 134)."""
    file = tmp_path / "ideas.txt"
    file.write_text("a fox in the rain\na red car at night\na boat on a lake\n")
    r = subprocess.run([sys.executable, "-c", DIES_ON_SECOND_CALL, str(file), str(home)], capture_output=True, text=True,
                       timeout=240, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})
    assert r.returncode == 2, (r.returncode, r.stderr)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "device lost" in errors[0] and "run the same command" in errors[0], r.stderr
    assert "terminate called" not in r.stderr and "Traceback" not in r.stderr
    with sqlite3.connect(home / "reverie.db") as conn:
        assert conn.execute("select count(*) from renders where status = 'ok'").fetchone()[0] >= 4  # the first round
        assert conn.execute("select status from batches").fetchall() == [("interrupted",)]


def test_an_idea_without_weights_fails_alone_and_a_rerun_retries_only_it(home, tmp_path):
    """Item 2 asks for sdxl, whose weights are not here: items 1 and 3 finish with K kept, item 2
    is marked failed with the pull line (stored, summarised, on the contact sheet), exit 0."""
    file = tmp_path / "ideas.jsonl"
    file.write_text('{"idea": "a fox in the rain"}\n{"idea": "a red car at night", "profile": "sdxl"}\n'
                    '{"idea": "a boat on a lake"}\n')
    args = ["batch", str(file), "--per-prompt", "2", "--keep", "2", "--megapixels", "0.02", "--scorer", "heuristic", "--json"]
    r = run_cli(*args, home=home)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    ok, bad = [result["items"][0], result["items"][2]], result["items"][1]
    assert all(i["status"] == "done" and len(i["kept"]) == 2 for i in ok)
    assert bad["status"] == "failed" and "reverie models pull sdxl" in bad["error"] and "\n" not in bad["error"]
    assert result["failed"] == 1 and "Traceback" not in r.stderr
    assert "1 of 3 ideas failed: 2. a red car at night (" in r.stderr
    with sqlite3.connect(home / "reverie.db") as conn:
        rows = conn.execute("select idx, status, error from batch_items order by idx").fetchall()
    assert [(i, s) for i, s, _ in rows] == [(0, "done"), (1, "failed"), (2, "done")] and "models pull sdxl" in rows[1][2]
    html = Path(result["report"]).read_text()
    assert "1 of 3 ideas failed" in html and "failed: weights for sdxl" in html
    assert html.count("data:image/jpeg;base64,") == 4

    again = run_cli(*args, home=home)
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout)
    assert second["renders_this_session"] == 0  # items 1 and 3 were done; only item 2 was tried
    assert "retrying 1 idea(s) that failed last time: 2" in again.stderr
    assert [i["status"] for i in second["items"]] == ["done", "failed", "done"]
    assert [[k["id"] for k in i["kept"]] for i in second["items"]] == [[k["id"] for k in i["kept"]] for i in result["items"]]


def test_every_idea_failing_is_exit_2(home, tmp_path):
    file = tmp_path / "ideas.jsonl"
    file.write_text('{"idea": "a red car at night", "profile": "sdxl"}\n')
    r = run_cli("batch", str(file), "--per-prompt", "1", "--keep", "1", "--megapixels", "0.02", "--scorer", "heuristic",
                home=home)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: weights for sdxl are not on this machine"), r.stderr


def test_ctrl_c_stops_a_batch_soon_and_keeps_every_finished_render(tmp_path):
    """SIGINT as a terminal sends it: the runs stop between images, every image on disk has its row."""
    file = tmp_path / "ideas.txt"
    file.write_text("\n".join(IDEAS) + "\n")
    home = tmp_path / "home"
    exe = Path(sys.executable).with_name("reverie")
    proc = subprocess.Popen([str(exe), "batch", str(file), "--per-prompt", "40", "--keep", "2", "--megapixels", "0.02",
                             "--engine", "fixed", "--scorer", "heuristic", "--home", str(home)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "NO_COLOR": "1"})
    deadline = time.monotonic() + 120
    while _count_renders(home / "reverie.db") < 6:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no renders appeared"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)  # a bound against hanging, not a timing claim
    assert proc.returncode == 130, stderr.decode()
    assert "everything rendered so far is saved" in stderr.decode() and "Traceback" not in stderr.decode()
    with sqlite3.connect(home / "reverie.db") as conn:
        paths = {r[0] for r in conn.execute("select path from renders where status = 'ok'")}
        assert conn.execute("select status from batches").fetchall() == [("interrupted",)]
    on_disk = {str(p.relative_to(home)) for p in (home / "images").glob("*/*.png")}
    assert len(paths) >= 6 and on_disk == paths  # nothing rendered was thrown away, nothing is unaccounted for
