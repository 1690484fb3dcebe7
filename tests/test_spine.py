"""The whole loop end to end on the embedded default: CLI, store, PNG metadata, graph, API."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from PIL import Image

from reverie.store.pngmeta import file_sha256
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_models_dir):
    """One real `reverie make` run through the console script, shared by the checks below."""
    home = tmp_path_factory.mktemp("spine") / "home"
    home.mkdir()
    (home / "models").symlink_to(tiny_models_dir, target_is_directory=True)
    proc = run_cli("make", "a fox in the rain", "--n", "4", "--rounds", "2", "--megapixels", "0.05", "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    return home, json.loads(proc.stdout), proc


def test_make_json_result(made):
    home, result, proc = made
    assert set(result) >= {"run_id", "best", "renders", "stop_reason"}
    assert result["renders"] == 8
    assert 1 <= len(result["best"]) <= 4
    composites = [b["scores"]["composite"] for b in result["best"]]
    assert composites == sorted(composites, reverse=True)
    for b in result["best"]:
        assert Path(b["path"]).is_file()
        assert isinstance(b["seed"], int)
        assert b["prompt"].startswith("A fox in the rain")


def test_embedded_default_is_said_once(made):
    _, result, proc = made
    lines = [line for line in proc.stderr.splitlines() if "embedded default" in line]
    assert len(lines) == 1
    assert "meaningless" in lines[0]


def test_database_holds_the_lineage(made):
    home, result, _ = made
    db = sqlite3.connect(home / "reverie.db")
    db.row_factory = sqlite3.Row
    assert db.execute("pragma journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in db.execute("select name from sqlite_master where type='table'")}
    assert {"runs", "prompts", "renders", "scores", "_migrations"} <= tables
    renders = db.execute("select * from renders where run_id = ?", [result["run_id"]]).fetchall()
    assert len(renders) == 8
    prompt_ids = {r["id"] for r in db.execute("select id from prompts where run_id = ?", [result["run_id"]])}
    seeds = set()
    for r in renders:
        assert r["prompt_id"] in prompt_ids
        spec = json.loads(r["spec_json"])
        assert spec["seed"] == r["seed"]
        seeds.add(r["seed"])
        assert r["engine"] == "tiny" and r["seconds"] > 0
        path = home / r["path"]
        assert file_sha256(path) == r["sha256"]
        assert path.name == f"{r['sha256']}.png" and path.parent.name == r["sha256"][:2]
        names = {s["name"] for s in db.execute("select name from scores where render_id = ?", [r["id"]])}
        assert "composite" in names and len(names) >= 3
    assert len(seeds) == 8


def test_every_png_carries_both_chunks(made):
    home, result, _ = made
    db = sqlite3.connect(home / "reverie.db")
    for path, seed, spec_json in db.execute("select path, seed, spec_json from renders"):
        with Image.open(home / path) as im:
            assert im.format == "PNG"
            params = im.text["parameters"]
            meta = json.loads(im.text["reverie"])
        spec = json.loads(spec_json)
        assert params.splitlines()[0] == spec["prompt"]
        for field in ("Steps: 9", "Sampler: Euler", "CFG scale: 1.0", f"Seed: {seed}", f"Size: {spec['width']}x{spec['height']}"):
            assert field in params
        assert meta["spec"] == spec and meta["run_id"] == result["run_id"]


def test_runs_and_show(made):
    home, result, _ = made
    proc = run_cli("runs", "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    runs = json.loads(proc.stdout)
    assert runs[0]["id"] == result["run_id"] and runs[0]["renders"] == 8 and runs[0]["status"] == "done"
    proc = run_cli("show", result["run_id"][:17], "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    tree = json.loads(proc.stdout)
    assert tree["run"]["idea"] == "a fox in the rain"
    count = 0
    stack = list(tree["prompts"])
    while stack:
        p = stack.pop()
        count += len(p["renders"])
        stack.extend(p["children"])
    assert count == 8
    proc = run_cli("show", result["run_id"], home=home)
    assert proc.returncode == 0 and "render" in proc.stdout and "seed" in proc.stdout
    # Every prompt whole (the tree wraps it, so compare without line breaks and tree rails), and
    # the round of each render, not only of its prompt.
    flat = " ".join(part.strip(" │├└─") for part in proc.stdout.splitlines())
    flat = " ".join(flat.split())
    stack = list(tree["prompts"])
    while stack:
        p = stack.pop()
        assert " ".join(p["text"].split()) in flat
        for r in p["renders"]:
            assert f"render {r['id']} round {r['round']} seed {r['seed']}" in flat
        stack.extend(p["children"])


def test_python_api(home):
    from reverie import Studio

    with Studio(home=home) as studio:
        result = studio.make("a lighthouse at dusk", n=2, rounds=2, megapixels=0.05, seed=11)
    assert len(result.renders) == 4
    best = result.best[0]
    assert Path(best.path).is_file() and best.seed in {11, 12, 13, 14}
    assert best.scores.composite == max(r.scores.composite for r in result.renders)
    assert best.spec.width % 16 == 0 and best.spec.steps == 9
    assert result.to_dict()["run_id"] == result.run_id


def test_target_stops_early(home):
    from reverie import Studio

    with Studio(home=home) as studio:
        result = studio.make("a quiet harbour", n=2, rounds=5, target=0.01, megapixels=0.05, seed=3)
    assert len(result.renders) == 2
    assert "target" in result.stop_reason


def test_stream_yields_events_then_result(home):
    from reverie import Studio

    with Studio(home=home) as studio:
        events = list(studio.stream("a red kite", n=2, rounds=1, megapixels=0.05, seed=5))
    kinds = [e.kind for e in events]
    assert kinds[0] == "loading"  # the first thing a caller hears, before the heavy imports
    assert kinds.count("rendered") == 2
    assert kinds[-1] == "result" and events[-1].data["result"].run_id


def test_graph_is_a_langgraph_state_graph():
    from langgraph.graph.state import CompiledStateGraph

    from reverie.orchestrator.graph import build_graph

    graph = build_graph()
    assert isinstance(graph, CompiledStateGraph)
    nodes = set(graph.get_graph().nodes)
    assert {"expand", "references", "render", "score", "judge", "finish"} <= nodes


@pytest.mark.parametrize(
    "args, words",
    [
        (["make", "   "], "idea is empty"),
        (["make", "a fox", "--n", "0"], "n must be"),
        (["make", "a fox", "--profile", "nope"], "unknown profile"),
        (["make", "a fox", "--engine", "nope"], "unknown engine"),
        (["make", "a fox", "--aspect", "wide"], "bad aspect"),
        (["make", "a fox", "--aspect", "0:1"], "bad aspect"),
        (["make", "a fox", "--megapixels", "100"], "bad megapixels"),
        (["make", "a fox", "--n", "abc"], "Invalid value for '--n'"),
        (["mkae", "a fox"], "No such command 'mkae'"),
    ],
)
def test_bad_input_is_one_clear_line(args, words, home):
    proc = run_cli(*args, home=home)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:") and words in lines[0]


def test_unwritable_home_is_one_clear_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    proc = run_cli("make", "a fox", "--n", "1", "--rounds", "1", home=blocker / "home")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot write to home" in lines[0] and "--home" in lines[0]


@pytest.mark.parametrize("columns", ["100", "200"])
def test_show_prints_every_path_unbroken(made, columns):
    """Each image path on one line whatever the width, so it can be copied in one go."""
    home, result, _ = made
    proc = run_cli("show", result["run_id"], home=home, env={"COLUMNS": columns})
    assert proc.returncode == 0, proc.stderr
    tree = json.loads(run_cli("show", result["run_id"], "--json", home=home).stdout)
    stack, paths = list(tree["prompts"]), []
    while stack:
        p = stack.pop()
        paths += [r["path"] for r in p["renders"]]
        stack.extend(p["children"])
    assert len(paths) == 8 and len(paths[0]) > 100  # longer than the narrow terminal
    lines = proc.stdout.splitlines()
    for path in paths + [b["path"] for b in result["best"]]:
        assert any(path in line for line in lines), path
