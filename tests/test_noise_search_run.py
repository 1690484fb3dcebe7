"""Search in noise space, wired: the diffusers engine takes each seed's low-frequency noise
components from the spec, `make --search noise` refits them round by round, and a searched render
reproduces pixel for pixel from its PNG."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reverie.orchestrator import noise_search
from reverie.orchestrator.requests import check_knobs, validate_request
from reverie.render.lowfreq import initial_latents, set_lowfreq
from reverie.store.pngmeta import read_metadata
from reverie.types import Reference, Request, RenderSpec, ReverieError
from tests.conftest import run_cli

SPEC = RenderSpec(prompt="a fox in the rain", seed=11, width=64, height=64, steps=2, guidance=0.0,
                  profile="z-image-turbo")
CHANNELS = 16  # Z-Image's latent channels; the tiny model has as many
LATENT = (CHANNELS, 8, 8)  # a 64x64 render's latent on the tiny model


def pixels(engine, spec):
    return np.asarray(engine.render([spec])[0].image)


def dct(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix, written out here so the test does not lean on the engine's own."""
    k, i = np.arange(n)[:, None], np.arange(n)[None, :]
    m = np.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m


def own_components(seed: int, side: int = noise_search.SIDE) -> tuple[float, ...]:
    """The low-frequency coefficients the seed's own noise already has."""
    import torch

    x = torch.randn((1, *LATENT), generator=torch.Generator().manual_seed(seed))[0].double().numpy()
    d = dct(LATENT[1])
    return tuple(float(v) for v in (d @ x @ d.T)[:, :side, :side].reshape(-1))


def test_an_empty_field_leaves_the_spec_and_the_pixels_as_they_were(tiny_engine):
    import torch

    assert "noise_lowfreq" not in SPEC.to_dict()  # old specs keep their hash
    assert RenderSpec.from_dict(SPEC.to_dict()) == SPEC
    # Today's pixels: the pipeline called directly, drawing its own noise from the seed.
    pipe = tiny_engine.load()
    embeds = tiny_engine.render([SPEC])  # warms the embeddings; its image is the engine's
    direct = pipe(prompt=SPEC.prompt, height=64, width=64, num_inference_steps=2, guidance_scale=0.0,
                  generator=[torch.Generator().manual_seed(SPEC.seed)], output_type="pil").images[0]
    assert np.array_equal(np.asarray(embeds[0].image), np.asarray(direct))
    # The engine draws the latents as the pipeline does: setting the seed's own components changes nothing.
    assert np.array_equal(pixels(tiny_engine, SPEC.with_(noise_lowfreq=own_components(SPEC.seed))),
                          pixels(tiny_engine, SPEC))


def test_components_change_the_picture_and_stay_with_the_spec(tiny_engine):
    comp = noise_search.draw(noise_search.NoiseDist.prior(noise_search.dims(CHANNELS)), [5])[0]
    searched = SPEC.with_(noise_lowfreq=comp)
    first = pixels(tiny_engine, searched)
    assert np.array_equal(first, pixels(tiny_engine, searched))
    assert not np.array_equal(first, pixels(tiny_engine, SPEC))
    assert searched.sha != SPEC.sha and RenderSpec.from_dict(searched.to_dict()) == searched
    # One searched and one plain spec in the same forward pass: each gets its own noise.
    both = tiny_engine.render([searched, SPEC.with_(seed=12)])
    assert both[0].spec == searched and both[1].spec.noise_lowfreq == ()


def test_only_the_lowest_frequencies_change_and_the_energy_moves_by_theirs():
    import torch

    g = torch.Generator().manual_seed(3)
    x = torch.randn(LATENT, generator=g)
    comp = tuple(float(v) for v in np.linspace(-2, 2, noise_search.dims(CHANNELS)))
    y = set_lowfreq(x, comp).double().numpy()
    d = dct(8)
    before, after = d @ x.double().numpy() @ d.T, d @ y @ d.T
    side = noise_search.SIDE
    assert np.allclose(after[:, :side, :side].reshape(-1), comp, atol=1e-5)
    mask = np.ones(LATENT, dtype=bool)
    mask[:, :side, :side] = False
    assert np.allclose(after[mask], before[mask], atol=1e-5)
    # Orthonormal: the energy changes by exactly the replaced coefficients' (unit variance kept in law).
    assert math.isclose(float((y ** 2).sum() - (x.double().numpy() ** 2).sum()),
                        float(np.sum(np.square(comp)) - (before[:, :side, :side] ** 2).sum()), rel_tol=1e-6)
    batch = initial_latents([torch.Generator().manual_seed(s) for s in (1, 2)], LATENT, [comp, ()])
    assert torch.equal(batch[1], torch.randn((1, *LATENT), generator=torch.Generator().manual_seed(2))[0])
    with pytest.raises(ReverieError, match="square per latent channel"):
        set_lowfreq(x, comp[:-1])


def test_the_next_distribution_leans_to_the_best_candidates():
    prior = noise_search.NoiseDist.prior(2)
    cands = [((1.0, 1.0), 0.9), ((1.2, 0.8), 0.8), ((-1.0, -1.0), 0.1), ((-1.2, -0.8), 0.2), ((5.0,), 1.0)]
    dist = noise_search.next_dist(prior, cands)
    assert all(m > 0.5 for m in dist.mean)  # the wrong-sized candidate (another model) is left out
    assert noise_search.next_dist(prior, [((), 0.5)]) == prior  # nothing searched yet: the prior


def test_engines_that_cannot_take_noise_refuse_it_in_one_line(tmp_path, tiny_engine):
    from reverie.profiles import get_profile
    from reverie.render.comfy_workflow import build_workflow, comfy_files
    from reverie.render.fixed import FixedLatencyEngine

    with pytest.raises(ReverieError, match="--search seeds"):
        validate_request(Request(idea="a fox", search="genetic"))
    with pytest.raises(ReverieError, match="cannot take initial noise"):
        check_knobs(Request(idea="a fox", search="noise"), FixedLatencyEngine())
    check_knobs(Request(idea="a fox", search="noise"), tiny_engine)  # in-process Z-Image takes it
    with pytest.raises(ReverieError, match="img2img reference starts from the image"):
        check_knobs(Request(idea="a fox", search="noise", references=(Reference("a.png", control="img2img"),)),
                    tiny_engine)
    profile = get_profile("z-image-turbo")
    with pytest.raises(ReverieError, match="ComfyUI cannot apply them"):
        build_workflow(SPEC.with_(noise_lowfreq=(0.0,) * 64), profile, comfy_files(profile))
    r = run_cli("make", "a fox", "--engine", "fixed", "--search", "noise", "--n", "1", "--rounds", "1",
                home=tmp_path / "home")
    assert r.returncode != 0 and "cannot take initial noise" in r.stderr and "Traceback" not in r.stderr


def test_a_noise_searched_run_refits_and_reproduces(home, tmp_path):
    from reverie.orchestrator.studio import Studio

    with Studio(home=home, engine="tiny", scorer="heuristic") as studio:
        result = studio.make("a fox in the rain", seed=3, n=2, rounds=2, megapixels=0.01, search="noise")
    first = sorted((r for r in result.renders if r.round == 0), key=lambda r: r.seed)
    second = sorted((r for r in result.renders if r.round == 1), key=lambda r: r.seed)
    assert len(first) == 2 and len(second) == 2
    prior = noise_search.NoiseDist.prior(noise_search.dims(CHANNELS))
    assert [r.spec.noise_lowfreq for r in first] == noise_search.draw(prior, [r.seed for r in first])
    refitted = noise_search.next_dist(prior, [(r.spec.noise_lowfreq, r.scores.composite) for r in first])
    assert refitted != prior
    assert [r.spec.noise_lowfreq for r in second] == noise_search.draw(refitted, [r.seed for r in second])
    path = second[0].path
    assert "Noise components: 64" in read_metadata(path)["parameters"]
    alone = tmp_path / "alone.png"
    alone.write_bytes(open(path, "rb").read())
    r = run_cli("reproduce", str(alone), "--engine", "tiny", home=home)
    assert r.returncode == 0 and "match: pixels identical" in r.stdout, r.stdout + r.stderr
