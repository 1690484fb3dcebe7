"""Profiles as data, and the other pipeline families on a tiny random SD1.5 UNet pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from reverie.profiles import DEFAULT_PROFILE, FAMILIES, PROFILES, family_of, get_profile
from reverie.render.editors import ADAPTERS  # the editing-only families register their adapters there
from reverie.render.families import SAMPLERS
from reverie.types import Control, RenderSpec, ReverieError


def test_profiles_carry_the_defaults_experts_use():
    z = get_profile("z-image-turbo")
    assert (z.pipeline, z.steps, z.guidance, z.shift, z.negative, z.multiple) == ("ZImagePipeline", 9, 0.0, 3.0, False, 16)
    assert z.control_repo == "alibaba-pai/Z-Image-Turbo-Fun-Controlnet-Union"
    assert get_profile("flux1-schnell").steps == 4 and get_profile("flux1-dev").guidance == 3.5
    assert get_profile("sd15").max_side == 768 and get_profile("sd15").negative
    assert get_profile("pony").quality_tags.startswith("score_9")
    import diffusers

    for p in PROFILES.values():
        assert hasattr(diffusers, p.pipeline), p.pipeline
        assert p.sampler == "euler" or p.sampler in SAMPLERS
    for cls_name, _extra in SAMPLERS.values():
        assert hasattr(diffusers, cls_name)


def test_every_family_is_data_plus_one_adapter():
    import diffusers

    assert DEFAULT_PROFILE in PROFILES
    assert {p.family for p in PROFILES.values()} <= set(FAMILIES) == set(ADAPTERS)
    for name, adapter in ADAPTERS.items():
        assert adapter.traits is FAMILIES[name]
        for cls_name in (adapter.img2img_pipeline, adapter.controlnet_model, adapter.controlnet_pipeline):
            assert cls_name is None or hasattr(diffusers, cls_name), cls_name


def test_the_cfg_convention_lives_with_the_family():
    from reverie.store.importers import parse_a1111
    from reverie.store.pngmeta import a1111_parameters

    z, sd = FAMILIES["z-image"], FAMILIES["sd15"]
    # Z-Image's diffusers guidance 0 is CFG 1: no classifier-free guidance, so no negative prompt.
    assert (z.runs_cfg(0.0), z.runs_cfg(0.5), z.cfg_scale(0.0), z.cfg_scale(2.5), z.guidance(1.0)) == (False, True, 1.0, 3.5, 0.0)
    assert (sd.runs_cfg(1.0), sd.runs_cfg(1.5), sd.cfg_scale(7.0), sd.guidance(7.0)) == (False, True, 7.0, 7.0)
    assert family_of("flux1-dev") is FAMILIES["flux"] and family_of("no-such-model") is None
    # PNG parameters and their import agree, both ways, for every profile.
    for p in PROFILES.values():
        spec = RenderSpec(prompt="a fox", seed=1, width=64, height=64, steps=p.steps, guidance=p.guidance, profile=p.name)
        text = a1111_parameters(spec)
        assert f"CFG scale: {p.traits.cfg_scale(p.guidance)}" in text
        assert parse_a1111(text.replace(f"Model: {p.name}", f"Model: {p.name}.safetensors")).spec.guidance == p.guidance


def test_unknown_profile_is_one_line():
    with pytest.raises(ReverieError) as e:
        get_profile("sd3")
    assert "reverie models" in str(e.value) and "\n" not in str(e.value)


@pytest.fixture(scope="module")
def sd15_engine(tiny_models_dir):
    from reverie.render.diffusers_engine import DiffusersEngine
    from reverie.render.tiny import ensure_tiny_sd15

    engine = DiffusersEngine(model_path=str(ensure_tiny_sd15(tiny_models_dir)), profile="sd15", device="cpu",
                             dtype="float32", batch_size=2)
    yield engine
    engine.close()


def sd_spec(**changes) -> RenderSpec:
    base = RenderSpec(prompt="a fox, masterpiece", negative="blurry, lowres", seed=3, width=32, height=32, steps=3,
                      guidance=7.0, profile="sd15", sampler="dpmpp_2m_karras")
    return base.with_(**changes)


def px(output) -> np.ndarray:
    return np.asarray(output.image, dtype=np.int16)


def test_sd15_pipeline_family(sd15_engine):
    engine = sd15_engine
    before = engine.encoder_calls
    a = engine.render([sd_spec(seed=1), sd_spec(seed=2), sd_spec(seed=3)])
    assert engine.encoder_calls - before == 1  # one (prompt, negative) pair for three seeds
    assert type(engine.pipe).__name__ == "StableDiffusionPipeline"
    assert type(engine.pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert engine.pipe.scheduler.config.use_karras_sigmas
    # same seed, same pixels, whatever its batch-mates (a batch of the same size: the shape is recorded)
    mates = engine.render([sd_spec(seed=9), sd_spec(seed=2)])
    assert mates[1].batch_size == a[1].batch_size == 2
    assert np.array_equal(px(mates[1]), px(a[1]))
    alone = engine.render([sd_spec(seed=2)])[0]
    # the negative prompt is used
    other_negative = engine.render([sd_spec(seed=2, negative="dark")])[0]
    assert np.abs(px(alone) - px(other_negative)).mean() > 0.05
    assert engine.encoder_calls - before == 2
    # blind steps and another sampler change the picture
    blind = engine.render([sd_spec(seed=2, blind_steps=1)])[0]
    assert np.abs(px(alone) - px(blind)).mean() > 0.05
    ancestral = engine.render([sd_spec(seed=2, sampler="euler_ancestral")])[0]
    assert type(engine.pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert np.abs(px(alone) - px(ancestral)).mean() > 0.05


def test_sd15_refuses_controlnet_kinds_but_says_what_works(sd15_engine, tmp_path):
    control = Control(kind="depth", image_sha="0" * 64, image_path=str(tmp_path / "x.png"), strength=0.5)
    with pytest.raises(ReverieError, match="img2img"):
        sd15_engine.render([sd_spec(control=control)])


@pytest.mark.slow
def test_sd15_img2img(sd15_engine, tmp_path):
    from PIL import Image

    ref = tmp_path / "ref.png"
    Image.fromarray((np.indices((32, 32)).sum(0) % 2 * 255).astype(np.uint8)).convert("RGB").save(ref)
    plain = sd15_engine.render([sd_spec()])[0]
    out = sd15_engine.render([sd_spec(control=Control("img2img", "0" * 64, str(ref), 0.6))])[0]
    assert np.abs(px(plain) - px(out)).mean() > 0.5
