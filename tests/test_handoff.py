"""Base-model first steps (--handoff-steps): the first K steps on the undistilled base, the rest on
the distilled model, in one loop over the distilled model's schedule; recorded in the spec and
the PNG, reproducible, refused in one line where it cannot run, and a variety knob the loop turns."""

from __future__ import annotations

import numpy as np
import pytest

from reverie.orchestrator import policy
from reverie.orchestrator.requests import check_knobs, validate_request
from reverie.profiles import handoff_base
from reverie.render.handoff import cfg_cutoff, flow_sigmas
from reverie.store.pngmeta import read_metadata
from reverie.types import Reference, RenderSpec, Request, ReverieError
from tests.conftest import run_cli

SPEC = RenderSpec(prompt="a fox in the rain", seed=11, width=64, height=64, steps=4, guidance=0.0,
                  profile="z-image-turbo")


def pixels(engine, spec):
    return np.asarray(engine.render([spec])[0].image)


def test_the_cutoff_falls_between_the_schedules_own_steps():
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    for steps, shift in ((4, 3.0), (9, 3.0), (9, 7.0), (2, 1.0)):
        sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift, use_dynamic_shifting=False)
        sched.set_timesteps(sigmas=torch.linspace(1.0, 1 / steps, steps).tolist())  # as ZImagePipeline does
        t_norm = ((1000 - sched.timesteps.float()) / 1000).tolist()
        assert np.allclose(flow_sigmas(steps, shift), sched.sigmas[:-1].tolist(), atol=1e-5)
        for k in range(1, steps):
            cut = cfg_cutoff(steps, k, shift)
            # The pipeline keeps CFG where t_norm <= cutoff: exactly the first k steps.
            assert [t <= cut for t in t_norm] == [i < k for i in range(steps)]
    with pytest.raises(ValueError):
        cfg_cutoff(4, 4, 3.0)


def test_the_loop_turns_the_fourth_knob_only_where_it_can():
    assert policy.turn_handoff(0, available=True, steps=9) == 1
    assert policy.turn_handoff(1, available=True, steps=9) == 1  # the default maximum: one step, as the paper
    assert policy.turn_handoff(1, available=True, steps=9, maximum=3) == 2
    assert policy.turn_handoff(0, available=False, steps=9) == 0  # no base model here: unchanged
    assert policy.turn_handoff(0, available=True, steps=1) == 0  # the distilled model keeps a step
    assert policy.turn_handoff(3, available=True, steps=9, maximum=1) == 3  # never lower than the person set it


def test_handoff_renders_on_both_models_and_leaves_the_plain_render_alone(tiny_engine):
    assert handoff_base("z-image-turbo") == "z-image" and handoff_base("sdxl") is None
    assert "handoff_steps" not in SPEC.to_dict()  # old specs keep their hash
    plain = pixels(tiny_engine, SPEC)
    one = SPEC.with_(handoff_steps=1)
    out = tiny_engine.render([one])[0]
    assert "tiny-z-image-base" in out.runtime["handoff_model"] and out.spec == one
    first = np.asarray(out.image)
    assert not np.array_equal(first, plain)
    assert np.array_equal(first, pixels(tiny_engine, one))
    assert not np.array_equal(first, pixels(tiny_engine, SPEC.with_(handoff_steps=2)))
    assert np.array_equal(plain, pixels(tiny_engine, SPEC))  # the distilled pipeline is as it was
    assert RenderSpec.from_dict(one.to_dict()) == one and one.sha != SPEC.sha


def test_the_handoff_is_the_base_model_for_k_steps_then_the_distilled_one(tiny_engine):
    """The same render built by hand: the base pipeline's first step with CFG, its latents handed
    to the distilled pipeline for the remaining sigmas."""
    import torch

    tiny_engine.render([SPEC.with_(handoff_steps=1)])
    pipe = tiny_engine.load()
    base_pipe = type(pipe)(**{**pipe.components, "transformer": type(pipe.transformer).from_pretrained(
        tiny_engine.handoff_weights())})
    base_pipe.set_progress_bar_config(disable=True)
    sigmas = torch.linspace(1.0, 1 / SPEC.steps, SPEC.steps).tolist()
    kept = {}

    def stop_after_first(p, step, t, kw):
        kept.setdefault("latents", kw["latents"].clone())
        p.transformer = pipe.transformer
        return {}

    image = base_pipe(prompt=SPEC.prompt, negative_prompt="", height=64, width=64, num_inference_steps=SPEC.steps,
                      sigmas=sigmas, guidance_scale=4.0, cfg_truncation=cfg_cutoff(SPEC.steps, 1, 3.0),
                      generator=[torch.Generator().manual_seed(SPEC.seed)], callback_on_step_end=stop_after_first,
                      output_type="pil").images[0]
    assert np.array_equal(np.asarray(image), pixels(tiny_engine, SPEC.with_(handoff_steps=1)))


def test_handoff_is_refused_in_one_line_where_it_cannot_run(tmp_path, tiny_engine, tiny_models_dir):
    from reverie.profiles import get_profile
    from reverie.render.comfy_workflow import build_workflow, comfy_files
    from reverie.render.fixed import FixedLatencyEngine

    with pytest.raises(ReverieError, match="cannot hand steps"):
        check_knobs(Request(idea="a fox", handoff_steps=1), FixedLatencyEngine())
    check_knobs(Request(idea="a fox", handoff_steps=1), tiny_engine)
    with pytest.raises(ReverieError, match="leaves no step"):
        validate_request(Request(idea="a fox", handoff_steps=9))
    with pytest.raises(ReverieError, match="starts from noise"):
        check_knobs(Request(idea="a fox", handoff_steps=1, references=(Reference("a.png", control="img2img"),)),
                    tiny_engine)
    with pytest.raises(ReverieError, match="without CFG"):
        check_knobs(Request(idea="a fox", handoff_steps=1, cfg=3.0), tiny_engine)
    with pytest.raises(ReverieError, match="ComfyUI cannot"):
        profile = get_profile("z-image-turbo")
        build_workflow(SPEC.with_(handoff_steps=1), profile, comfy_files(profile))
    r = run_cli("make", "a fox", "--engine", "tiny", "--profile", "sdxl", "--handoff-steps", "1", "--n", "1",
                "--rounds", "1", home=tmp_path / "home")
    assert r.returncode != 0 and "no base model" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_handoff_run_records_and_reproduces_and_the_loop_turns_it_on(home, tmp_path):
    from reverie.orchestrator.studio import Studio

    with Studio(home=home, engine="tiny", scorer="heuristic") as studio:
        handed = studio.make("a fox in the rain", seed=3, n=1, rounds=1, megapixels=0.01, handoff_steps=1)
        # An exact prompt's second round is a variety round: the loop turns the fourth knob on.
        turned = studio.make("a fox in the rain", seed=5, n=1, rounds=2, megapixels=0.01, exact=True)
    assert [r.spec.handoff_steps for r in handed.renders] == [1]
    assert sorted((r.round, r.spec.handoff_steps) for r in turned.renders) == [(0, 0), (1, 1)]
    for render in (handed.renders[0], next(r for r in turned.renders if r.round == 1)):
        assert "Handoff steps: 1" in read_metadata(render.path)["parameters"]
        alone = tmp_path / f"alone-{render.id}.png"
        alone.write_bytes(open(render.path, "rb").read())
        r = run_cli("reproduce", str(alone), "--engine", "tiny", home=home)
        assert r.returncode == 0 and "match: pixels identical" in r.stdout, r.stdout + r.stderr


def test_loop_handoff_false_in_reverie_toml_keeps_the_loop_off_the_base_model(home):
    from reverie.orchestrator.studio import Studio

    (home / "reverie.toml").write_text("[loop]\nhandoff = false\n")
    with Studio(home=home, engine="tiny", scorer="heuristic") as studio:
        turned = studio.make("a fox in the rain", seed=5, n=1, rounds=2, megapixels=0.01, exact=True)
    assert sorted((r.round, r.spec.handoff_steps) for r in turned.renders) == [(0, 0), (1, 0)]


def test_a_batch_line_and_the_batch_options_carry_handoff_steps():
    from reverie.orchestrator.batch import parse_batch_text

    item = parse_batch_text('{"idea": "a fox", "handoff_steps": 1}')[0]
    assert dict(item.controls) == {"handoff_steps": 1}
    r = run_cli("batch", "--help")
    assert "--handoff-steps" in r.stdout
    assert Request.from_dict(Request(idea="a fox", handoff_steps=1).to_dict()).handoff_steps == 1
    assert "handoff_steps" not in Request(idea="a fox").to_dict()  # old requests keep their hash
