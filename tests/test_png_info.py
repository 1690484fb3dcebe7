"""What PNG Info, civitai and `reverie lineage` read from a render: the real model, the engine, the
library versions, and rounds counted from 1 as `reverie show` counts them."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

from reverie.render.tiny import TINY_DIR_NAME
from reverie.store.pngmeta import read_metadata
from tests.conftest import run_cli


def fields(parameters: str) -> dict[str, str]:
    last = parameters.splitlines()[-1]
    return dict(re.findall(r"([A-Za-z][A-Za-z ]*): ([^,]+(?:\([^)]*\))?)", last))


def make_json(home: Path, *extra: str) -> dict:
    proc = run_cli("make", "a lighthouse at dusk", "--n", "1", "--rounds", "2", "--megapixels", "0.01",
                   "--seed", "7", "--json", *extra, home=home)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def db_rounds(home: Path) -> dict[str, int]:
    conn = sqlite3.connect(home / "reverie.db")
    try:
        return {sha: rnd for sha, rnd in conn.execute("select sha256, round from renders")}
    finally:
        conn.close()


def test_tiny_engine_png_names_itself_not_z_image_turbo(home):
    result = make_json(home)
    stored = db_rounds(home)
    assert sorted(stored.values()) == [0, 1]  # the store counts from 0
    for best in result["best"]:
        png = home / best["path"]
        chunks = read_metadata(png)
        f = fields(chunks["parameters"])
        meta = json.loads(chunks["reverie"])
        assert f["Model"] == f"{TINY_DIR_NAME} (random weights)" and "z-image-turbo" not in f["Model"]
        assert re.fullmatch(r"[0-9a-f]{10}", f["Model hash"])
        assert f["Engine"].startswith("tiny (diffusers ")
        assert best["round"] == int(f["Round"]) == meta["round"] == stored[best["sha256"]] + 1 >= 1
        assert meta["format"] == 2
        assert meta["model"] == f["Model"] and meta["model_hash"] == f["Model hash"]
        versions = meta["versions"]
        assert versions["torch"] and versions["diffusers"] and versions["reverie"]
        assert versions["cuda"] is None and versions["device"] == "cpu"


def test_diffusers_engine_png_names_the_weights_folder(home):
    weights = home / "models" / TINY_DIR_NAME
    result = make_json(home, "--engine", "diffusers", "--model-path", str(weights), "--device", "cpu")
    f = fields(read_metadata(home / result["best"][0]["path"])["parameters"])
    assert f["Model"] == TINY_DIR_NAME and f["Engine"].startswith("diffusers (diffusers ")
    assert re.fullmatch(r"[0-9a-f]{10}", f["Model hash"])


def test_weights_hash_of_a_file_is_a1111_short_hash(tmp_path):
    import hashlib

    from reverie.render.diffusers_engine import weights_hash

    blob = bytes(range(256)) * 8192  # 2 MiB
    (tmp_path / "model.safetensors").write_bytes(blob)
    assert weights_hash(tmp_path / "model.safetensors") == hashlib.sha256(blob[0x100000:0x110000]).hexdigest()[:8]


def test_show_and_lineage_json_count_rounds_from_1_like_their_text(home):
    result = make_json(home)
    stored = db_rounds(home)
    tree = json.loads(run_cli("show", result["run_id"], "--json", home=home).stdout)
    prompts, stack = [], list(tree["prompts"])
    while stack:
        prompts.append(stack.pop())
        stack.extend(prompts[-1]["children"])
    renders = [r for p in prompts for r in p["renders"]]
    assert sorted(r["round"] for r in renders) == [1, 2]
    assert all(r["round"] == stored[r["sha256"]] + 1 for r in renders)
    assert min(p["round"] for p in prompts) == 1
    assert all(r["round"] >= p["round"] for p in prompts for r in p["renders"])
    for best in result["best"]:
        info = json.loads(run_cli("lineage", best["sha256"], "--json", home=home).stdout)
        assert info["render"]["round"] == best["round"] == stored[best["sha256"]] + 1
        assert 1 <= info["prompts"][-1]["round"] <= best["round"]  # a kept prompt renders again later


def test_a_format_1_chunk_keeps_its_0_based_round():
    from reverie.store.db import stored_round

    assert stored_round({"format": 1, "round": 1}) == 1
    assert stored_round({"round": 0}) == 0
    assert stored_round({"format": 2, "round": 2}) == 1
