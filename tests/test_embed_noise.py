"""The third variety knob: seeded noise on the text embeddings, recorded in the spec and the PNG,
turned by the loop when a round's images are alike, and reproduced pixel for pixel."""

from __future__ import annotations

import numpy as np

from reverie.agents.critic import Critique
from reverie.orchestrator import policy
from reverie.store.pngmeta import read_metadata
from reverie.types import RenderSpec
from tests.conftest import run_cli

SPEC = RenderSpec(prompt="a fox in the rain", seed=11, width=64, height=64, steps=2, guidance=0.0,
                  profile="z-image-turbo")


def pixels(engine, spec):
    return np.asarray(engine.render([spec])[0].image)


def test_embedding_noise_is_seeded_and_changes_the_picture(tiny_engine):
    noisy = SPEC.with_(embed_noise=0.3)
    first, again = pixels(tiny_engine, noisy), pixels(tiny_engine, noisy)
    assert np.array_equal(first, again)  # the same spec, the same noise
    assert not np.array_equal(first, pixels(tiny_engine, SPEC))
    assert not np.array_equal(first, pixels(tiny_engine, SPEC.with_(embed_noise=0.6)))  # the strength counts


def test_the_knob_stays_out_of_old_specs():
    assert "embed_noise" not in SPEC.to_dict()  # hashes of specs from before the knob do not change
    noisy = SPEC.with_(embed_noise=0.2)
    assert noisy.sha != SPEC.sha and RenderSpec.from_dict(noisy.to_dict()) == noisy
    assert policy.turn_embed_noise(0.0) == 0.1 and policy.turn_embed_noise(0.25) == 0.3
    assert policy.diversity(0.93) == 0.07 and policy.diversity(None) is None


class AlwaysVariety:
    def critique(self, idea, expansion, profile, round_best, previous_best, similarity, details):
        return Critique("variety", f"too alike (mean cosine {similarity:.2f})")


def test_the_loop_turns_it_and_reproduce_matches(home, tmp_path):
    from reverie.orchestrator.studio import Studio

    events = []
    with Studio(home=home, engine="tiny", scorer="heuristic", critic=AlwaysVariety()) as studio:
        result = studio.make("a fox in the rain", seed=3, n=2, rounds=2, megapixels=0.01, progress=events.append)
    second = [r for r in result.renders if r.round == 1]
    assert second and all(r.spec.embed_noise == 0.1 for r in second)
    assert all(r.spec.embed_noise == 0.0 for r in result.renders if r.round == 0)
    judged = [e.data for e in events if e.kind == "judged" and e.data.get("decision") == "variety"]
    assert judged and 0.0 <= judged[0]["diversity"] <= 1.0 and judged[0]["embed_noise"] == 0.1
    shown = run_cli("show", result.run_id, home=home)
    assert shown.returncode == 0 and "diversity 0." in shown.stdout and "over 4 images" in shown.stdout
    path = second[0].path
    assert "Embedding noise: 0.1" in read_metadata(path)["parameters"]
    alone = tmp_path / "alone.png"
    alone.write_bytes(open(path, "rb").read())
    r = run_cli("reproduce", str(alone), "--engine", "tiny", home=home)
    assert r.returncode == 0 and "match: pixels identical" in r.stdout, r.stdout + r.stderr


def test_comfyui_refuses_the_knob_instead_of_dropping_it():
    import pytest

    from reverie.profiles import get_profile
    from reverie.render.comfy_workflow import build_workflow, comfy_files
    from reverie.types import ReverieError

    profile = get_profile("z-image-turbo")
    build_workflow(SPEC, profile, comfy_files(profile))  # without it, the same spec builds
    with pytest.raises(ReverieError, match="embedding noise .* --engine diffusers"):
        build_workflow(SPEC.with_(embed_noise=0.1), profile, comfy_files(profile))


def test_the_noise_belongs_to_the_seed_not_the_batch_position():
    import torch

    from reverie.render.diffusers_engine import with_embed_noise

    base = torch.randn(1, 7, 16)
    tensors = with_embed_noise({"prompt_embeds": base.repeat(3, 1, 1), "pooled_prompt_embeds": torch.ones(3, 4)},
                               [5, 6, 5], 0.2)
    lists = with_embed_noise({"prompt_embeds": [base[0]] * 2}, [6, 5], 0.2)  # Z-Image takes a list per image
    assert torch.equal(tensors["prompt_embeds"][0], tensors["prompt_embeds"][2])
    assert torch.equal(tensors["prompt_embeds"][1], lists["prompt_embeds"][0])
    assert not torch.equal(tensors["prompt_embeds"][0], tensors["prompt_embeds"][1])
    assert torch.equal(tensors["pooled_prompt_embeds"], torch.ones(3, 4))  # only the positive sequence is noised
    noise = tensors["prompt_embeds"][0] - base[0]
    assert 0.1 < float(noise.std() / base.std()) < 0.3  # the strength is a share of the embeddings' spread
    row = base[0]
    assert with_embed_noise({"prompt_embeds": [row]}, [1], 0.0)["prompt_embeds"][0] is row  # off: untouched


def test_make_takes_the_variety_knobs_from_the_first_round(home, tmp_path):
    """`--shift`, `--blind-steps` and `--embed-noise` on the command line reach every spec, the PNG
    and reproduce; the loop turning the knob never lowers what the person set."""
    import json

    made = run_cli("make", "a fox in the rain", "--n", "2", "--rounds", "1", "--megapixels", "0.01", "--seed", "4",
                   "--shift", "6", "--blind-steps", "1", "--embed-noise", "0.4", "--json", home=home)
    assert made.returncode == 0, made.stderr
    best = json.loads(made.stdout)["best"]
    for image in best:
        info = json.loads(run_cli("lineage", image["sha256"], "--json", home=home).stdout)
        assert (info["spec"]["shift"], info["spec"]["blind_steps"], info["spec"]["embed_noise"]) == (6.0, 1, 0.4)
        assert info["request"]["embed_noise"] == 0.4
        assert "Embedding noise: 0.4" in read_metadata(image["path"])["parameters"]
    alone = tmp_path / "alone.png"
    alone.write_bytes(open(best[0]["path"], "rb").read())
    r = run_cli("reproduce", str(alone), "--engine", "tiny", home=home)
    assert r.returncode == 0 and "match: pixels identical" in r.stdout, r.stdout + r.stderr
    assert policy.turn_embed_noise(0.4) == 0.4 and policy.turn_embed_noise(0.0) == 0.1


def test_an_engine_that_cannot_add_embedding_noise_refuses_it(home):
    r = run_cli("make", "a fox", "--embed-noise", "0.1", "--engine", "fixed", home=home)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == ("error: the fixed engine cannot add noise to the text embeddings: "
                                                 "leave --embed-noise out, or render in-process (--engine diffusers)")
