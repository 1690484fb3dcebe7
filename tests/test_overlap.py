"""Storing and scoring overlap rendering: engines hand each output on as it finishes, the render
node stores and scores it on a worker thread, and nothing handed on is lost when a call fails.
Real tiny diffusers engine, real fixed engine, real SQLite, real PNG files, the scripted ComfyUI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reverie.orchestrator.studio import Studio
from reverie.render.fixed import FixedLatencyEngine
from reverie.render.tiny import TinyEngine
from reverie.scoring.heuristic import HeuristicScorer
from reverie.store.db import Store
from reverie.store.pngmeta import read_reverie_meta
from reverie.types import RenderSpec, ReverieError
from tests.comfy_server import ComfyServer, fake_render


def spec(**changes) -> RenderSpec:
    base = RenderSpec(prompt="a fox in the rain", seed=7, width=32, height=32, steps=2, guidance=0.0,
                      profile="z-image-turbo", shift=3.0)
    return base.with_(**changes)


def recorded_render(engine, specs):
    """Render, logging on_output calls and engine_image events in one timeline."""
    timeline, handed = [], []

    def on_output(output):
        timeline.append(("output", output.spec.seed))
        handed.append(output)

    def progress(event):
        if event.kind == "engine_image":
            timeline.append(("image", event.data["seed"]))

    returned = engine.render(specs, progress, on_output=on_output)
    return returned, handed, timeline


def test_tiny_engine_hands_on_each_output_once_in_order_of_completion(tiny_engine):
    # Two prompts interleaved: the engine renders them grouped by prompt, so completion order
    # differs from spec order; the returned list stays in spec order.
    specs = [spec(seed=1), spec(prompt="a cat", seed=2), spec(seed=3), spec(prompt="a cat", seed=4)]
    returned, handed, timeline = recorded_render(tiny_engine, specs)
    assert [o.spec.seed for o in returned] == [1, 2, 3, 4]
    assert [o.spec.seed for o in handed] == [1, 3, 2, 4]
    assert sorted(map(id, handed)) == sorted(map(id, returned))  # the same objects, once each
    # Each output is handed on as soon as it is ready: right before its own progress event.
    assert timeline == [e for seed in (1, 3, 2, 4) for e in (("output", seed), ("image", seed))]


def test_fixed_engine_hands_on_each_output_once_as_it_finishes():
    specs = [spec(seed=s, width=64, height=48) for s in (5, 6, 7)]
    returned, handed, timeline = recorded_render(FixedLatencyEngine(latency=0.01), specs)
    assert handed == returned and [o.spec.seed for o in handed] == [5, 6, 7]
    assert timeline == [e for seed in (5, 6, 7) for e in (("output", seed), ("image", seed))]


class FailsAfterFirstBatch(TinyEngine):
    """The real tiny engine, whose device fails once its first batch is done."""

    def render_batch(self, batch, *args):
        if getattr(self, "batches_done", 0) >= 1:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        self.batches_done = getattr(self, "batches_done", 0) + 1
        return super().render_batch(batch, *args)


def studio_with_engine(home: Path, engine) -> Studio:
    return Studio(home=home, engine=engine, scorer="heuristic")


def stored(home: Path) -> tuple[str, list]:
    store = Store(home)
    try:
        [run] = store.list_runs()
        return run["id"], store.renders(run["id"])
    finally:
        store.close()


def test_engine_failure_mid_call_keeps_what_it_handed_on(home, tiny_models_dir):
    args = dict(n=4, rounds=1, seed=21, megapixels=0.01, steps=2)
    studio = studio_with_engine(home, FailsAfterFirstBatch(models_dir=tiny_models_dir, batch_size=2))
    with pytest.raises(RuntimeError, match="illegal memory access"):
        studio.make("a fox in the rain", **args)
    studio.close()

    run_id, renders = stored(home)
    assert sorted(r.seed for r in renders) == [21, 22]  # the first batch, stored and scored
    for r in renders:
        assert r.scores is not None and r.scores.scorer == "heuristic"
        with Image.open(r.path) as im:
            assert im.size == (r.spec.width, r.spec.height)
        assert read_reverie_meta(r.path)["spec_sha"] == r.spec.sha

    # The same call continues the run: only the two missing seeds are rendered.
    studio = studio_with_engine(home, TinyEngine(models_dir=tiny_models_dir, batch_size=2))
    result = studio.make("a fox in the rain", **args)
    studio.close()
    assert result.run_id == run_id
    assert sorted(r.seed for r in result.renders) == [21, 22, 23, 24]
    assert {r.id for r in renders} <= {r.id for r in result.renders}
    assert all(r.scores is not None for r in result.renders)


class ScorerThatBreaks(HeuristicScorer):
    """The real heuristic scorer whose model 'goes away' on the first call."""

    def score(self, images, ideas, prompts):
        raise ReverieError("the scoring model went away: run `reverie models pull clip` again")


def test_an_error_while_storing_or_scoring_reaches_the_caller(home):
    studio = Studio(home=home, engine="fixed", scorer=ScorerThatBreaks(), engine_options={"latency": 0.0})
    with pytest.raises(ReverieError, match="scoring model went away"):
        studio.make("a fox in the rain", n=3, rounds=1, seed=5, megapixels=0.01)
    studio.close()
    _, renders = stored(home)
    assert renders and all(r.scores is None for r in renders)  # stored before the scorer failed


def test_comfyui_pool_dying_mid_call_keeps_the_finished_images(tmp_path):
    home = tmp_path / "home"
    # Its first prompt is the TextGenerate expansion (no LLM configured); it dies starting the third image.
    with ComfyServer(die_at=4) as lone:
        studio = Studio(home=home, engine="comfyui", scorer="heuristic",
                        engine_options={"servers": [lone.url], "queue_depth": 1, "poll_interval": 0.2, "timeout": 2.0})
        with pytest.raises(ReverieError) as e:
            studio.make("a fox in the rain", n=4, rounds=1, seed=60, megapixels=0.01)
        studio.close()
    message = str(e.value)
    assert lone.url in message and message.endswith("start ComfyUI or pass --comfy-url")
    assert "2 of 4 images were rendered" in message and "\n" not in message

    _, renders = stored(home)
    assert sorted(r.seed for r in renders) == [60, 61]
    for r in renders:
        assert r.scores is not None
        with Image.open(r.path) as im:
            assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(fake_render(r.seed, *im.size)))
