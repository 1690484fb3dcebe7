"""The portfolio measures similarity on CLIP image embeddings where CLIP scored the run (its
scorer's embeddings, else from the files), and on pixel signatures otherwise; show and the
report say which."""

from __future__ import annotations

import numpy as np

from reverie.orchestrator.curation import CLIP, PIXEL, clip_embedder, curate, portfolio_line
from reverie.orchestrator.studio import Studio
from reverie.store.db import Store
from tests.conftest import run_cli


def clip_home(home, tiny_scoring):
    table = {**tiny_scoring, "held_out": "off", "pickscore": "off", "hps_weights": "off"}
    (home / "reverie.toml").write_text("[scoring]\n" + "".join(f'{k} = "{v}"\n' for k, v in table.items()))
    return home


def test_a_clip_scored_run_keeps_its_portfolio_on_clip_embeddings(home, tiny_scoring):
    clip_home(home, tiny_scoring)
    with Studio(home=home, engine="tiny", scorer="clip") as studio:
        made = studio.make("a harbour at dawn", seed=7, n=6, rounds=1, megapixels=0.01, diversity=0.3)
        curated = studio.curate(made.run_id, 4)
        in_memory = {r.id: studio.clip_embeddings.get(r.id) for r in made.renders}
    assert curated.basis == CLIP and {r.id for r in curated.renders} == {r.id for r in made.best}
    assert all(v is not None and len(v) == len(next(iter(in_memory.values()))) for v in in_memory.values())
    store = Store(home)
    try:
        # Read back from the files, with the [scoring] settings' own CLIP: the scorer's embeddings again.
        from_files = clip_embedder(store, made.run_id, {"scoring": dict(tiny_scoring, device="cpu")})
        assert from_files is not None
        renders = store.renders(made.run_id)
        for r, v in zip(renders, from_files(renders)):
            assert np.allclose(v, in_memory[r.id], atol=1e-4)
        line = portfolio_line(store, made.run_id, 4, {"scoring": tiny_scoring}, from_files)
        assert "on CLIP image embeddings" in line and "Vendi" in line
        # The same run measured without CLIP says so.
        assert PIXEL in portfolio_line(store, made.run_id, 4) and "CLIP is not here" in portfolio_line(store, made.run_id, 4)
    finally:
        store.close()
    shown = run_cli("show", made.run_id, home=home)
    assert shown.returncode == 0 and "on CLIP image embeddings" in shown.stdout, shown.stdout + shown.stderr


def test_a_heuristic_run_keeps_its_portfolio_on_pixel_signatures(home):
    with Studio(home=home, engine="tiny", scorer="heuristic") as studio:
        made = studio.make("a harbour at dawn", seed=7, n=4, rounds=1, megapixels=0.01, diversity=0.3)
        assert studio.curate(made.run_id, 3).basis == PIXEL
    store = Store(home)
    try:
        assert clip_embedder(store, made.run_id, {}) is None  # no CLIP scored it: nothing to embed
        assert curate(store, made.run_id, 3, threshold=0.95, diversity=0.0).basis == ""  # plain top-K
    finally:
        store.close()
