"""`reverie models` and `reverie models pull`, and missing weights, through the real CLI."""

from __future__ import annotations

import json

import pytest

from reverie.profiles import PROFILES, get_profile
from reverie.types import ReverieError
from tests.conftest import run_cli

# An empty Hugging Face cache, and no way to reach the hub: nothing here can download.
OFFLINE = {"HF_HUB_OFFLINE": "1"}


@pytest.fixture
def empty_cache(tmp_path) -> dict:
    return {**OFFLINE, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf" / "hub")}


def test_models_json_lists_every_profile_not_present(tmp_path, empty_cache):
    home = tmp_path / "home"
    (home / "models" / "pose").mkdir(parents=True)
    (home / "models" / "pose" / "body_pose_model.pth").write_bytes(b"weights")
    r = run_cli("models", "--json", home=home, env=empty_cache)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    by_name = {row["name"]: row for row in rows}
    for name, p in PROFILES.items():
        row = by_name[name]
        assert row["kind"] == "profile" and row["present"] is False
        assert (row["pipeline"], row["steps"], row["guidance"]) == (p.pipeline, p.steps, p.guidance)
    assert by_name["z-image-turbo-control"]["kind"] == "control"
    # preprocessors live in the home, where the reference picker reads them
    assert by_name["pose"]["present"] is True and by_name["pose"]["where"] == str(home / "models" / "pose")
    assert by_name["depth"]["present"] is False
    assert "Traceback" not in r.stderr


def invoke(*args: str):
    """The same typer app in this process (the console script is tested with run_cli above)."""
    from typer.testing import CliRunner

    from reverie.cli import app

    return CliRunner().invoke(app, list(args))


def test_models_table_names_the_pull_command(home, empty_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", empty_cache["HF_HUB_CACHE"])
    r = invoke("models", "--home", str(home))
    assert r.exit_code == 0, r.output
    assert "z-image-turbo" in r.output and "models pull" in r.output


def test_missing_model_is_one_line_naming_pull(home, empty_cache):
    r = run_cli("make", "a fox", "--engine", "diffusers", "--n", "1", "--rounds", "1", home=home, env=empty_cache)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error:") and "reverie models pull z-image-turbo" in lines[-1]


def test_pull_offline_is_one_clear_line(home, empty_cache):
    r = run_cli("models", "pull", "sd15", home=home, env=empty_cache)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert [line for line in r.stderr.splitlines() if line.strip()] == [
        "error: cannot pull sd15: HF_HUB_OFFLINE is set; unset it (and reach huggingface.co) to download"]


def test_pull_unknown_name_lists_the_known_ones(home):
    r = invoke("models", "pull", "sd3", "--home", str(home))
    assert r.exit_code == 2 and "z-image-turbo-control" in r.output and "laion" in r.output


def test_resolve_weights_reads_local_paths_and_never_downloads(tmp_path, monkeypatch, tiny_models_dir):
    from reverie.render.tiny import TINY_DIR_NAME
    from reverie.render.weights import resolve_controlnet, resolve_weights

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    folder = tiny_models_dir / TINY_DIR_NAME
    assert resolve_weights(get_profile("z-image-turbo"), str(folder)) == str(folder)
    with pytest.raises(ReverieError, match="--model-path"):
        resolve_weights(get_profile("z-image-turbo"), str(tmp_path / "nothing"))
    with pytest.raises(ReverieError, match="pull z-image-turbo-control"):
        resolve_controlnet(get_profile("z-image-turbo"), None)
    with pytest.raises(ReverieError, match="--model-path"):
        resolve_weights(get_profile("pony"), None)


def test_make_engine_options_reach_the_engine(home):
    common = ("make", "a fox", "--engine", "tiny", "--n", "1", "--rounds", "1", "--megapixels", "0.01", "--json",
              "--home", str(home))
    # No such GPU here (or anywhere): the option arrived, and the answer is one line.
    r = invoke(*common, "--device", "cuda:7")
    assert r.exit_code == 2 and "cuda:7" in r.output
    r = invoke(*common, "--batch-size", "0")
    assert r.exit_code == 2 and "batch size" in r.output
    r = invoke(*common, "--dtype", "float8")
    assert r.exit_code == 2 and "unknown dtype" in r.output


def test_models_says_where_each_present_model_is_its_size_and_source_at_80_columns(tmp_path, empty_cache):
    """A hub snapshot (laid out as huggingface_hub lays one out: links to shared blobs) and a home
    preprocessor: each named with its size on disk and its source, its whole path on a line of its own."""
    home = tmp_path / "home"
    (home / "models" / "pose").mkdir(parents=True)
    (home / "models" / "pose" / "body_pose_model.pth").write_bytes(b"w" * 2500)
    repo = tmp_path / "hf" / "hub" / "models--Tongyi-MAI--Z-Image-Turbo"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "abc").write_bytes(b"x" * 1_200_000)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for name in ("model_index.json", "copy.json"):  # two links to one blob count once
        (snapshot / name).symlink_to(repo / "blobs" / "abc")
    done = run_cli("models", home=home, env={**empty_cache, "COLUMNS": "80"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines if not line.startswith("  /")), done.stdout
    assert "z-image-turbo (1.2 MB, HF cache)" in lines and f"  {snapshot}" in lines
    assert "pose (2.5 KB, reverie home)" in lines and f"  {home / 'models' / 'pose'}" in lines
    rows = {r["name"]: r for r in json.loads(run_cli("models", "--json", home=home, env=empty_cache).stdout)}
    assert (rows["z-image-turbo"]["size_bytes"], rows["z-image-turbo"]["source"]) == (1_200_000, "HF cache")
