"""The diffusers engine on tiny random models: the real pipeline code, no mocks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from reverie.render.resolution import size_for
from reverie.types import Control, RenderSpec, ReverieError


def spec(**changes) -> RenderSpec:
    base = RenderSpec(prompt="a fox in the rain", seed=7, width=32, height=32, steps=3, guidance=0.0,
                      profile="z-image-turbo", shift=3.0)
    return base.with_(**changes)


def pixels(output) -> np.ndarray:
    assert output.error == ""
    return np.asarray(output.image.convert("RGB"), dtype=np.int16)


def differs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def test_a_seeds_pixels_do_not_depend_on_its_batch_mates(tiny_engine):
    first = tiny_engine.render([spec(seed=3), spec(seed=11), spec(seed=5)])
    again = tiny_engine.render([spec(seed=12), spec(seed=11), spec(seed=4)])
    assert [o.spec.seed for o in first] == [3, 11, 5]
    assert np.array_equal(pixels(first[1]), pixels(again[1]))
    # and different seeds are different pictures
    assert differs(pixels(first[0]), pixels(first[1])) > 1.0


class CountDecoded:
    """Wraps the real pipeline's VAE decode and records how many latents each call decodes."""

    def __init__(self, engine):
        self.vae = engine.load().vae
        self.sizes: list[int] = []

    def __enter__(self):
        decode = self.vae.decode

        def counted(z, *args, **kwargs):
            self.sizes.append(int(z.shape[0]))
            return decode(z, *args, **kwargs)

        self.vae.decode = counted
        return self

    def __exit__(self, *exc):
        del self.vae.decode  # back to the class's method


def test_a_remainder_renders_as_a_smaller_batch_with_no_throw_away_images(tiny_engine):
    assert tiny_engine.batch_size == 4
    before = tiny_engine.images_rendered
    with CountDecoded(tiny_engine) as count:
        outputs = tiny_engine.render([spec(seed=s) for s in range(5)])
    assert count.sizes == [4, 1]  # 5 pipeline images for 5 seeds, not 8
    assert tiny_engine.images_rendered - before == 5
    assert [o.spec.seed for o in outputs] == [0, 1, 2, 3, 4]
    assert [o.batch_size for o in outputs] == [4, 4, 4, 4, 1]  # recorded, so reproduce re-creates the shape
    # The remainder, rendered alone, is the same picture as the same seed alone.
    assert np.array_equal(pixels(outputs[4]), pixels(tiny_engine.render([spec(seed=4)])[0]))
    # A seed from the full batch comes back exactly when padded to its recorded batch size,
    # which is what `reproduce` does.
    tiny_engine.pad_batches = True
    try:
        with CountDecoded(tiny_engine) as count:
            padded = tiny_engine.render([spec(seed=1)])[0]
    finally:
        tiny_engine.pad_batches = False
    assert count.sizes == [4] and padded.batch_size == 4
    assert np.array_equal(pixels(outputs[1]), pixels(padded))


def test_encoder_runs_once_per_prompt_for_many_seeds(tiny_engine):
    before = tiny_engine.encoder_calls
    prompt = "a red dragon over a misty lake at sunset"
    outputs = tiny_engine.render([spec(prompt=prompt, seed=s) for s in range(6)])
    assert len(outputs) == 6
    assert tiny_engine.encoder_calls - before == 1
    tiny_engine.render([spec(prompt=prompt, seed=99)])
    assert tiny_engine.encoder_calls - before == 1  # still cached
    tiny_engine.render([spec(prompt=prompt + " in fog", seed=99)])
    assert tiny_engine.encoder_calls - before == 2


def test_blind_steps_change_the_image(tiny_engine):
    plain = pixels(tiny_engine.render([spec()])[0])
    blind = tiny_engine.render([spec(blind_steps=2)])[0]
    assert blind.spec.blind_steps == 2
    assert differs(plain, pixels(blind)) > 0.1
    # deterministic: the same blind render again gives the same pixels
    assert np.array_equal(pixels(blind), pixels(tiny_engine.render([spec(blind_steps=2)])[0]))


def test_shift_changes_the_image_and_is_restored(tiny_engine):
    base = pixels(tiny_engine.render([spec(shift=3.0)])[0])
    shifted = pixels(tiny_engine.render([spec(shift=7.0)])[0])
    assert differs(base, shifted) > 0.1
    assert np.array_equal(base, pixels(tiny_engine.render([spec(shift=3.0)])[0]))


def test_cfg_with_negative_prompt_encodes_each_pair_once(tiny_engine):
    before = tiny_engine.encoder_calls
    a = tiny_engine.render([spec(guidance=2.0, negative="dark blurry", seed=s) for s in (1, 2)])
    b = tiny_engine.render([spec(guidance=2.0, negative="bright", seed=1)])
    assert tiny_engine.encoder_calls - before == 2  # one per (prompt, negative)
    assert differs(pixels(a[0]), pixels(b[0])) > 0.05


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_engine) -> str:
    path = tmp_path_factory.mktemp("ref") / "ref.png"
    # Not the render's size or shape: the engine fits it to the output size.
    yy, xx = np.mgrid[0:24, 0:40]
    edges = (((xx // 4) + (yy // 4)) % 2 * 255).astype(np.uint8)
    Image.fromarray(np.stack([edges] * 3, axis=-1)).save(path)
    return str(path)


@pytest.mark.parametrize("kind", ["canny", "img2img"])
def test_control_and_img2img_change_the_image(tiny_engine, reference, kind):
    plain = pixels(tiny_engine.render([spec()])[0])
    control = Control(kind=kind, image_sha="0" * 64, image_path=reference, strength=0.7)
    out = tiny_engine.render([spec(control=control), spec(control=control, seed=8)])
    assert out[0].spec.control == control
    assert differs(plain, pixels(out[0])) > 0.5
    assert differs(pixels(out[0]), pixels(out[1])) > 0.1  # seeds still matter
    # the variant shares the base pipeline's modules: no second copy of the weights
    variant = tiny_engine._variants["img2img" if kind == "img2img" else "controlnet"]
    assert variant.transformer is tiny_engine.pipe.transformer
    assert variant.text_encoder is tiny_engine.pipe.text_encoder


def test_control_strength_matters(tiny_engine, reference):
    weak, strong = (tiny_engine.render([spec(control=Control("depth", "0" * 64, reference, s))])[0] for s in (0.2, 1.0))
    assert differs(pixels(weak), pixels(strong)) > 0.1


def test_missing_control_image_is_one_clear_line(tiny_engine, tmp_path):
    control = Control(kind="pose", image_sha="0" * 64, image_path=str(tmp_path / "nope.png"), strength=0.5)
    with pytest.raises(ReverieError) as e:
        tiny_engine.render([spec(control=control)])
    assert "\n" not in str(e.value) and "nope.png" in str(e.value)


def test_comfy_only_sampler_is_refused_by_name(tiny_engine):
    with pytest.raises(ReverieError, match="res_multistep"):
        tiny_engine.render([spec(sampler="res_multistep")])


def test_blind_steps_recorded_in_spec_and_png(home):
    from reverie.orchestrator.studio import Studio
    from reverie.store.pngmeta import read_metadata

    with Studio(home=home, engine="tiny") as studio:
        result = studio.make("a fox in the rain", n=2, rounds=1, megapixels=0.01, seed=5, blind_steps=2)
    assert result.renders
    for r in result.renders:
        assert r.spec.blind_steps == 2
        meta = read_metadata(r.path)
        assert "Blind steps: 2" in meta["parameters"]
        recorded = meta["reverie"] if isinstance(meta["reverie"], dict) else json.loads(meta["reverie"])
        assert recorded["spec"]["blind_steps"] == 2


@pytest.mark.parametrize(
    "aspect, mp, multiple, cap, expected",
    [
        ("1:1", 1.0, 16, 2048, (1024, 1024)),
        ("16:9", 1.0, 16, 2048, (1360, 768)),
        ("2:3", 1.0, 64, 1536, (832, 1280)),
        ("1:1", 2.5, 8, 768, (768, 768)),  # capped, shape kept
        ("9:16", 4.0, 16, 1280, (720, 1280)),
    ],
)
def test_resolution_from_aspect_and_megapixels(aspect, mp, multiple, cap, expected):
    w, h = size_for(aspect, mp, multiple, cap)
    assert (w, h) == expected
    assert w % multiple == 0 and h % multiple == 0 and max(w, h) <= cap


@pytest.mark.parametrize("aspect", ["wide", "0:1", "100:1"])
def test_bad_aspect_is_one_line(aspect):
    with pytest.raises(ReverieError) as e:
        size_for(aspect, 1.0, 16, 2048)
    assert "\n" not in str(e.value)
