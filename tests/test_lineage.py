"""Lineage you can trust: migrations, resume after a crash, orphan files, engine failures,
lineage/reproduce/export commands and foreign metadata. Real SQLite, real tiny diffusers engine."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin
from typer.testing import CliRunner

from reverie.cli import app
from reverie.orchestrator.worker import render_with_retry
from reverie.orchestrator.studio import Studio
from reverie.render.tiny import TinyEngine
from reverie.store.db import Store
from reverie.store.importers import import_metadata
from reverie.store.migrations import migrate
from reverie.store.pngmeta import file_sha256, read_metadata
from reverie.store.recovery import claim_run
from reverie.types import Event, RenderSpec, Request, ReverieError

cli = CliRunner()


class DiesOnSecondBatch(TinyEngine):
    """A real tiny engine whose process 'dies' (Ctrl-C) on its second render call."""

    calls = 0

    def render(self, specs, progress=None, on_output=None):
        type(self).calls += 1
        if type(self).calls == 2:
            raise KeyboardInterrupt
        return super().render(specs, progress, on_output)


class NoMemoryForBatches(TinyEngine):
    """Runs out of memory whenever more than one seed goes through at once."""

    def render_batch(self, batch, *args):
        if self.batch_size > 1:
            raise MemoryError("CUDA out of memory (simulated by a batch larger than 1)")
        return super().render_batch(batch, *args)


class NaNWeights(TinyEngine):
    """The real pipeline with NaN weights: NaN latents decode to a black image."""

    def load(self):
        pipe = super().load()
        import torch

        with torch.no_grad():
            for p in pipe.transformer.parameters():
                p.fill_(float("nan"))
        return pipe


def _studio_with(home: Path, engine) -> Studio:
    return Studio(home=home, engine=engine)


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, tiny_models_dir):
    """A run interrupted in its second round, damaged on disk, then continued by the same call."""
    home = tmp_path_factory.mktemp("lineage") / "home"
    home.mkdir()
    (home / "models").symlink_to(tiny_models_dir, target_is_directory=True)
    args = dict(n=2, rounds=3, seed=11, megapixels=0.05)
    studio = _studio_with(home, DiesOnSecondBatch(models_dir=tiny_models_dir))
    with pytest.raises(KeyboardInterrupt):
        studio.make("a fox in the rain", **args)
    studio.close()
    store = Store(home)
    first = store.list_runs()[0]
    assert first["status"] == "interrupted" and first["renders"] == 2
    rows = store.render_rows(first["id"])
    # Damage: one file lost, one row lost (its file becomes an orphan), one temp leftover.
    (home / rows[0]["path"]).unlink()
    with store.db.conn:
        store.db.execute("delete from scores where render_id = ?", [rows[1]["id"]])
        store.db.execute("delete from renders where id = ?", [rows[1]["id"]])
    (home / "images" / "00").mkdir(exist_ok=True)
    (home / "images" / "00" / ".x.png.999999999.tmp").write_bytes(b"half")
    store.close()
    events: list[Event] = []
    with Studio(home=home, engine="tiny") as again:
        result = again.make("a fox in the rain", progress=events.append, **args)
    return {"home": home, "first": first, "result": result, "events": events, "lost": rows[0], "orphan": rows[1]}


def test_migrations_are_recorded_once(tmp_path):
    store = Store(tmp_path / "h")
    names = [r["name"] for r in store.db["_migrations"].rows]
    assert names[:3] == ["m001_initial", "m002_llm_calls_and_controls", "m003_run_owner_and_image_index"]
    assert migrate(store.db) == []  # a second open applies nothing
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert "owner_pid" in store.db["runs"].columns_dict
    store.close()
    again = Store(tmp_path / "h")
    assert [r["name"] for r in again.db["_migrations"].rows] == names


def test_resume_continues_the_same_run_and_repairs_files(resumed):
    home, result = resumed["home"], resumed["result"]
    assert result.run_id == resumed["first"]["id"]
    conn = sqlite3.connect(home / "reverie.db")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("select status from runs").fetchall() == [("done",)]
    rows = conn.execute("select spec_sha, seed, path, sha256 from renders where status = 'ok'").fetchall()
    assert len(rows) == 6 and len({r[0] for r in rows}) == 6 and len({r[1] for r in rows}) == 6
    for _, _, path, sha in rows:
        assert file_sha256(home / path) == sha
    assert (home / resumed["lost"]["path"]).exists()  # re-rendered: same seed, same pixels, same hash
    assert resumed["orphan"]["path"] in {r[2] for r in rows}  # the orphan file was adopted
    # ...in the round it was made in: the PNG says 1-based round 1, the store keeps 0-based 0.
    adopted_round = conn.execute("select round from renders where path = ?", [resumed["orphan"]["path"]]).fetchone()[0]
    assert adopted_round == resumed["orphan"]["round"] == 0
    assert not list((home / "images").glob("*/.*.tmp"))
    notices = [e.data["message"] for e in resumed["events"] if e.kind == "notice"]
    assert any("continuing run" in n and "1 missing files rendered again" in n for n in notices)
    # Checkpoints were written per run (thread id = run id).
    ck = sqlite3.connect(home / "checkpoints.db")
    assert ck.execute("select count(*) from checkpoints where thread_id = ?", [result.run_id]).fetchone()[0] > 0


def test_a_held_run_is_not_resumed_twice(tmp_path):
    store = Store(tmp_path / "h")
    req = Request(idea="two batches", n=1, rounds=1)  # no seed: a second copy explores new seeds
    run_a, _, lock_a, resumed_a = claim_run(store, req, "tiny", 1)
    store.finish_run(run_a, "interrupted", "test")
    run_b, _, lock_b, resumed_b = claim_run(store, req, "tiny", 2)  # a's owner (us) still holds it
    assert not resumed_a and not resumed_b and run_b != run_a
    lock_a.release()
    run_c, _, lock_c, resumed_c = claim_run(store, req, "tiny", 3)
    assert resumed_c and run_c == run_a
    lock_b.release(), lock_c.release()
    # With a seed, a second copy would render the very same images: it is refused, naming the run.
    seeded = Request(idea="two batches", n=1, rounds=1, seed=1)
    run_d, _, lock_d, _ = claim_run(store, seeded, "tiny", 1)
    with pytest.raises(ReverieError, match=f"being made right now as run {run_d}"):
        claim_run(store, seeded, "tiny", 1)
    lock_d.release()


def test_lineage_reproduce_and_export(resumed, tmp_path):
    home, result = resumed["home"], resumed["result"]
    best = result.best[0]
    shown = cli.invoke(app, ["lineage", best.path, "--home", str(home), "--json"])
    assert shown.exit_code == 0, shown.output
    info = json.loads(shown.stdout)
    assert info["run"]["idea"] == "a fox in the rain" and info["render"]["file_ok"]
    assert info["spec"]["seed"] == best.seed and info["scores"]["composite"] == pytest.approx(best.scores.composite)
    assert info["prompts"][0]["source"] in ("formula", "dreamer", "user")
    by_prefix = cli.invoke(app, ["lineage", best.sha256[:10], "--home", str(home), "--json"])
    assert json.loads(by_prefix.stdout)["render"]["id"] == best.id

    # The PNG alone (copied outside the home) reproduces pixel for pixel.
    alone = tmp_path / "alone.png"
    alone.write_bytes(Path(best.path).read_bytes())
    rep = cli.invoke(app, ["reproduce", str(alone), "--engine", "tiny", "--home", str(home)])
    assert rep.exit_code == 0 and "match: pixels identical" in rep.stdout, rep.output
    # A changed pixel is reported with its difference and exit code 1.
    with Image.open(alone) as im:
        im.load()
        meta = read_metadata(alone)
        px = im.convert("RGB")
    px.putpixel((0, 0), tuple((c + 40) % 256 for c in px.getpixel((0, 0))))
    info_png = PngImagePlugin.PngInfo()
    info_png.add_itxt("reverie", meta["reverie"])
    px.save(alone, pnginfo=info_png)
    bad = cli.invoke(app, ["reproduce", str(alone), "--engine", "tiny", "--home", str(home)])
    assert bad.exit_code == 1 and "mismatch: max pixel difference" in bad.stdout

    out = tmp_path / "export"
    ex = cli.invoke(app, ["export", result.run_id, str(out), "--top", "3", "--home", str(home), "--json"])
    assert ex.exit_code == 0, ex.output
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 3 and len(list(out.glob("*.json"))) == 3
    side = json.loads(pngs[0].with_suffix(".json").read_text())
    assert side["rank"] == 1 and side["run"]["id"] == result.run_id and "spec" in side and side["scores"]
    assert read_metadata(pngs[0])["reverie"]  # the metadata travels with the copy


def test_out_of_memory_retries_with_smaller_batches(tiny_models_dir):
    engine = NoMemoryForBatches(models_dir=tiny_models_dir, batch_size=4)
    specs = [RenderSpec(prompt="a fox", seed=s, width=64, height=64, steps=2, guidance=0.0, profile="z-image-turbo")
             for s in range(3)]
    events: list[Event] = []
    outputs = render_with_retry(engine, specs, events.append)
    assert [o.spec.seed for o in outputs] == [0, 1, 2] and all(o.image is not None for o in outputs)
    assert engine.batch_size == 1
    assert sum("out of memory" in e.data.get("message", "") for e in events) == 2  # 4 -> 2 -> 1


def test_nan_images_are_failed_and_never_ranked(home, tiny_models_dir):
    studio = _studio_with(home, NaNWeights(models_dir=tiny_models_dir))
    # Not one usable image: the run fails with the reason, instead of an empty table and exit 0.
    with pytest.raises(ReverieError, match="no image was rendered: the engine returned a black image"):
        studio.make("a fox", n=2, rounds=1, seed=1, megapixels=0.05)
    studio.close()
    store = Store(home)
    run = store.list_runs()[0]
    assert run["status"] == "failed" and "black image" in run["stop_reason"]
    rows = store.render_rows(run["id"])
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert all("black image" in r["error"] and r["path"] is None for r in rows)


def _png(path: Path, **chunks: str) -> Path:
    info = PngImagePlugin.PngInfo()
    for k, v in chunks.items():
        info.add_text(k, v)
    Image.new("RGB", (32, 48), (10, 120, 60)).save(path, pnginfo=info)
    return path


A1111 = ("masterpiece, best quality, a (red fox:1.2) in the rain, wet fur\n"
         "Negative prompt: lowres, blurry, extra limbs\n"
         'Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 1234567, Size: 832x1216, Model hash: 31e35c80fc, '
         'Model: sd_xl_base_1.0, Lora hashes: "foxy: 1a2b, rain: 3c4d", Version: v1.10.1')

COMFY = {
    "3": {"class_type": "KSampler", "inputs": {"seed": 42, "steps": 9, "cfg": 1.0, "sampler_name": "res_multistep",
                                                "scheduler": "simple", "denoise": 1.0, "model": ["11", 0],
                                                "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
    "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 1024, "height": 768, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a fox in the rain, cinematic", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
    "4": {"class_type": "UNETLoader", "inputs": {"unet_name": "z_image_turbo_bf16.safetensors", "weight_dtype": "default"}},
    "11": {"class_type": "ModelSamplingAuraFlow", "inputs": {"shift": 3.0, "model": ["4", 0]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
}


def test_foreign_metadata_is_imported(tmp_path):
    a1111 = import_metadata(read_metadata(_png(tmp_path / "a1111.png", parameters=A1111)))
    s = a1111.spec
    assert a1111.source == "a1111" and a1111.model == "sd_xl_base_1.0" and s.profile == "sdxl"
    assert s.prompt == "masterpiece, best quality, a (red fox:1.2) in the rain, wet fur"
    assert s.negative == "lowres, blurry, extra limbs"
    assert (s.seed, s.steps, s.guidance, s.sampler, s.width, s.height) == (1234567, 28, 6.5, "dpmpp_2m_karras", 832, 1216)
    assert a1111.extra["Lora hashes"] == "foxy: 1a2b, rain: 3c4d"

    comfy = import_metadata(read_metadata(_png(tmp_path / "comfy.png", prompt=json.dumps(COMFY))))
    c = comfy.spec
    assert comfy.source == "comfyui" and c.profile == "z-image-turbo"
    assert (c.prompt, c.seed, c.steps, c.guidance, c.sampler, c.width, c.height, c.shift) == \
        ("a fox in the rain, cinematic", 42, 9, 0.0, "res_multistep", 1024, 768, 3.0)

    shown = cli.invoke(app, ["lineage", str(tmp_path / "comfy.png"), "--home", str(tmp_path / "h"), "--json"])
    assert shown.exit_code == 0, shown.output
    info = json.loads(shown.stdout)
    assert info["origin"] == "comfyui" and info["note"].startswith("foreign image") and info["spec"]["seed"] == 42
    text = cli.invoke(app, ["lineage", str(tmp_path / "a1111.png"), "--home", str(tmp_path / "h")])
    assert "foreign image: not made by reverie" in text.stdout


def test_a_run_is_resumed_only_on_the_same_engine_identity(tmp_path):
    """A rerun with other weights or model files starts a new run instead of mixing two models
    in one run."""
    from reverie.store.db import Store
    from reverie.store.recovery import claim_run
    from reverie.types import Request

    store = Store(tmp_path / "home")
    req = Request(idea="a fox in the rain", n=2, rounds=1)
    zimage_a = '{"engine":"comfyui","files":{"unet":"a.safetensors"}}'
    zimage_b = '{"engine":"comfyui","files":{"unet":"b.safetensors"}}'
    first, seed, lock, resumed = claim_run(store, req, "comfyui", 5, identity=zimage_a)
    assert not resumed
    store.finish_run(first, "interrupted", "killed")
    lock.release()

    other, _, other_lock, resumed = claim_run(store, req, "comfyui", 6, identity=zimage_b)
    assert not resumed and other != first
    other_lock.release()

    again, again_seed, again_lock, resumed = claim_run(store, req, "comfyui", 7, identity=zimage_a)
    assert resumed and again == first and again_seed == seed == 5
    again_lock.release()
    store.close()


def test_lineage_text_reads_every_step_at_100_columns(home):
    """Each step under its own key, wrapped lines kept indented, the path on one line; with the
    dreamer's model and system-prompt hash and the critic's reason for its revision."""
    from tests.conftest import run_cli
    from tests.openai_server import ScriptedLLM
    from tests.test_agents import REVISED, _director

    with ScriptedLLM(responder=_director) as llm, Studio(home=home, engine="tiny", llm_url=llm.url) as studio:
        result = studio.make("a fox in the rain", n=1, rounds=2, seed=3, megapixels=0.05)
    revised = next(r for r in result.renders if r.prompt == REVISED)
    info = json.loads(run_cli("lineage", str(revised.id), "--json", home=home).stdout)
    done = run_cli("lineage", str(revised.id), home=home, env={"COLUMNS": "100"})
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    keys = ("idea", "asked by", "expansion", "revision", "spec", "image", "scores")
    # A wrapped line stays in the value column: it never starts at the left edge.
    assert all(line.startswith(keys) or line.startswith(" " * 12) for line in lines), done.stdout
    assert [line.split()[0] for line in lines if not line.startswith(" ")] == \
        ["idea", "expansion", "revision", "spec", "image", "scores"]
    assert any(info["render"]["path"] in line for line in lines)  # unbroken, copyable
    flat = " ".join(done.stdout.split())
    dreamer, critic = info["prompts"]
    assert "source dreamer" in flat and "model scripted-model" in flat and dreamer["system_hash"][:12] in flat
    assert "Faithfulness is low: the fox is too small." in flat and " ".join(REVISED.split()) in flat
    assert f"render {revised.id}, round 2, seed {revised.seed}, ok" in flat
    sc = info["scores"]
    assert f"composite {sc['composite']:.3f}" in flat and sc["scorer"] in flat
    assert all(f"{k} {v:.3f}" in flat for k, v in sc.items() if k not in ("composite", "scorer"))
    assert f"seed {info['spec']['seed']}" in flat and info["spec_sha"][:16] in flat


def test_every_image_of_an_uneven_run_records_its_batch_and_reproduces(home, tiny_models_dir, tmp_path):
    """N=5 at batch 4: a batch of 4 and a batch of 1 (no padding), each PNG says which, and
    `reproduce` re-creates that shape, so both kinds match pixel for pixel."""
    from reverie.store.pngmeta import read_reverie_meta

    engine = TinyEngine(models_dir=tiny_models_dir, batch_size=4)
    studio = _studio_with(home, engine)
    result = studio.make("a fox in the rain", n=5, rounds=1, seed=3, megapixels=0.01)
    studio.close()
    assert engine.images_rendered == 5
    renders = sorted(result.renders, key=lambda r: r.seed)
    sizes = [read_reverie_meta(r.path)["batch_size"] for r in renders]
    assert sorted(sizes) == [1, 4, 4, 4, 4]
    for size in (1, 4):
        picked = renders[sizes.index(size)]
        alone = tmp_path / f"batch{size}.png"
        alone.write_bytes(Path(picked.path).read_bytes())
        rep = cli.invoke(app, ["reproduce", str(alone), "--engine", "tiny", "--home", str(home)])
        assert rep.exit_code == 0 and "match: pixels identical" in rep.stdout and f"batch {size})" in rep.stdout, rep.output
