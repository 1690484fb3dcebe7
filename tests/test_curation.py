"""The best images of a run are diverse: a pixel-identical copy of a kept render is left out."""

from __future__ import annotations

import dataclasses

from PIL import Image

from reverie.orchestrator.studio import Studio
from reverie.types import EngineOutput


def test_best_drops_a_pixel_identical_render(tmp_path):
    with Studio(home=tmp_path / "home", engine="fixed", scorer="heuristic", engine_options={"latency": 0}) as studio:
        result = studio.make("a fox in the rain", n=3, rounds=1, seed=11, megapixels=0.02)
        assert len(result.best) == 3  # three seeds of seeded noise: all distinct
        top = result.best[0]
        # The engine hands back the top image's pixels again for another seed (as a model that
        # ignores its noise would): stored as its own render with the same scores.
        with Image.open(top.path) as im:
            copy = EngineOutput(spec=dataclasses.replace(top.spec, seed=top.seed + 1000), image=im.convert("RGB"),
                                engine="fixed", engine_version="fixed 1", seconds=0.0)
        prompt_id = studio.store.render_row(top.id)["prompt_id"]
        twin = studio.store.add_render(result.run_id, prompt_id, top.round, copy)
        studio.store.add_scores(twin, top.scores)

        assert {top.id, twin} <= {r.id for r in studio.store.best(result.run_id, k=4)}  # plain top-k holds both
        best = studio.result(result.run_id, k=4).best
        assert len(best) == 3
        assert len({r.id for r in best} & {top.id, twin}) == 1
        assert [r.scores.composite for r in best] == sorted((r.scores.composite for r in best), reverse=True)


def test_the_signature_cache_of_a_long_lived_studio_is_bounded():
    from reverie.orchestrator.curation import SignatureCache

    cache = SignatureCache(size=2)
    for render_id in (1, 2, 3):
        cache[render_id] = (float(render_id), 1.0)
    assert len(cache) == 2 and cache.get(1) is None and cache.get(3) == (3.0, 1.0)
