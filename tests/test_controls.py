"""The hand-set controls a ComfyUI user expects: --steps, --cfg, --negative, --sampler, --exact."""

from __future__ import annotations

import json

import pytest

from reverie.orchestrator.batch import parse_batch_text
from reverie.store.db import Store
from reverie.types import Request, ReverieError
from tests.conftest import run_cli


def test_make_exact_stores_a_spec_with_exactly_the_given_controls(home):
    res = run_cli("make", "a red fox on snow", "--exact", "--steps", "4", "--cfg", "1.5", "--negative", "blur",
                  "--n", "1", "--rounds", "1", "--megapixels", "0.05", "--engine", "tiny", "--scorer", "heuristic",
                  "--json", home=home)
    assert res.returncode == 0, res.stderr
    run_id = json.loads(res.stdout)["run_id"]
    store = Store(home)
    try:
        [render] = store.renders(run_id)
        spec = render.spec
        assert (spec.prompt, spec.steps, spec.negative) == ("a red fox on snow", 4, "blur")
        # The spec keeps diffusers' guidance; CFG as ComfyUI writes it is what the person typed.
        from reverie.store.pngmeta import cfg_scale

        assert cfg_scale(spec) == 1.5
        [prompt] = store.prompts(run_id)
        assert prompt["source"] == "user" and prompt["text"] == "a red fox on snow"
    finally:
        store.close()


def test_exact_rounds_keep_the_words_and_vary_only_the_seeds(home):
    from reverie.orchestrator.studio import Studio

    with Studio(home=home, engine="tiny", scorer="heuristic") as studio:
        result = studio.make("a lighthouse at dusk", exact=True, n=1, rounds=2, megapixels=0.05, seed=7)
        prompts = studio.store.prompts(result.run_id)
        renders = studio.store.renders(result.run_id)
    assert [p["text"] for p in prompts] == ["a lighthouse at dusk"]  # no critic rewrite in round 2
    assert len(renders) == 2 and len({r.seed for r in renders}) == 2


@pytest.mark.parametrize("controls, says", [
    ({"negative": "blur"}, "--cfg 1.5"),  # Z-Image Turbo runs at CFG 1: a negative has no effect
    ({"sampler": "dpmpp_2m"}, "flow-matching"),
    ({"sampler": "nope"}, "unknown sampler"),
    ({"cfg": 0.5}, "CFG must be between 1"),
    ({"steps": 0}, "steps must be between 1 and 200"),
])
def test_a_control_the_profile_cannot_honour_is_refused_in_one_line(home, controls, says):
    from reverie.orchestrator.studio import Studio

    with Studio(home=home, engine="tiny", scorer="heuristic") as studio:
        with pytest.raises(ReverieError, match=says):
            studio.request("a fox", **controls)
        assert studio.store.list_runs(limit=5) == []


def test_cli_refuses_a_bad_control_before_any_run(home):
    res = run_cli("make", "a fox", "--negative", "blur", "--engine", "tiny", home=home)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "--cfg" in res.stderr


def test_jsonl_lines_carry_the_controls():
    items = parse_batch_text('{"idea": "a fox", "steps": 6, "cfg": 2, "negative": "text", "exact": true}\n'
                             '{"idea": "an owl", "sampler": "euler"}\n')
    assert dict(items[0].controls) == {"steps": 6, "cfg": 2, "negative": "text", "exact": True}
    assert dict(items[1].controls) == {"sampler": "euler"}
    with pytest.raises(ReverieError, match='"steps" must be a whole number'):
        parse_batch_text('{"idea": "a fox", "steps": "six"}')


def test_unset_controls_leave_the_request_hash_as_before():
    # A request from before the controls existed resumes the same run: its dict has no new keys.
    assert set(Request(idea="a fox").to_dict()) == {"idea", "n", "rounds", "target", "aspect", "megapixels", "profile",
                                                   "references", "seed", "shift", "blind_steps", "steps", "max_seconds"}


def test_a_named_style_from_reverie_toml_wraps_the_written_prompt(tmp_path):
    from reverie.orchestrator.studio import Studio

    home = tmp_path / "home"
    home.mkdir()
    (home / "reverie.toml").write_text('[styles.watercolor]\nprompt = "{prompt} Watercolor on rough paper."\n'
                                       'negative = "photo"\n')
    with Studio(home=home, engine="fixed", engine_options={"latency": 0.0}, scorer="heuristic") as studio:
        assert studio.style_names() == ["watercolor"]
        result = studio.make("a fox in the rain", style="watercolor", n=1, rounds=2, megapixels=0.02)
        prompts = studio.store.prompts(result.run_id)
        with pytest.raises(ReverieError, match="unknown style 'oil'.*defines watercolor"):
            studio.request("a fox", style="oil")
        exact = studio.make("a fox, exactly", style="watercolor", exact=True, n=1, rounds=1, megapixels=0.02)
        assert [p["text"] for p in studio.store.prompts(exact.run_id)] == ["a fox, exactly"]
    assert prompts[0]["text"].startswith("A fox in the rain") and prompts[0]["text"].endswith("Watercolor on rough paper.")
    assert "photo" in prompts[0]["negative"]
    # Once only, whatever the critic rewrote in round 2.
    assert all(p["text"].count("Watercolor on rough paper.") == 1 for p in prompts)
