"""The dreamer on a causal LM in this process: the tiny engine's own Qwen3 text encoder, and a tiny
random Qwen3ForCausalLM saved to disk. Random weights write nonsense, so these tests show what the
machinery guarantees: the shared tensors, JSON that parses only because decoding is constrained,
the seed and tokens in llm_calls, one notice when the nonsense is refused, and the bounds."""

from __future__ import annotations

import gc
import json
import weakref

import pytest

from reverie.agents.critic import CRITIC_SYSTEM, STYLE_NATURAL, CriticAnswer, critic_schema
from reverie.agents.dreamer import Dreams, dreams_schema, system_prompt, user_message
from reverie.agents.llm import LLMSettings, LLMUnavailable, llm_settings, parse_reply
from reverie.agents.local_llm import (LocalLLM, bounded_schema, can_generate, causal_lm_over, encoder_loader,
                                      folder_loader, longest_answer)
from reverie.profiles import get_profile
from reverie.types import ReverieError
from tests.conftest import run_cli

ZIMAGE = get_profile("z-image-turbo")
CRITIC_REPORT = json.dumps({"idea": "a red fox in the rain", "prompt": "A red fox sits in the rain.", "round_best": 0.41,
                            "previous_best": 0.4, "similarity": 0.5})


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory):
    """A tiny random Qwen3ForCausalLM with its own (untied) output head, saved as a model folder."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from reverie.render.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(3)
    model = Qwen3ForCausalLM(Qwen3Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, head_dim=16,
                                         vocab_size=len(tokenizer), max_position_embeddings=4096,
                                         tie_word_embeddings=False))
    folder = tmp_path_factory.mktemp("tiny-qwen3-lm")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def encoder_llm(tiny_engine, **settings) -> tuple[LocalLLM, list[dict], list]:
    calls, events = [], []
    # No wall-clock limit in a logic test: on a loaded machine the default 60 s cut the answer short.
    settings.setdefault("timeout", 3600.0)
    llm = LocalLLM(LLMSettings(retries=0, **settings), encoder_loader(tiny_engine.load), backend="encoder",
                   model="tiny encoder", record=calls.append, progress=events.append, keep_loaded=False)
    return llm, calls, events


def test_the_causal_lm_shares_the_encoders_tensors(tiny_engine):
    encoder = tiny_engine.load().text_encoder
    lm = causal_lm_over(encoder)
    embeddings = encoder.get_input_embeddings().weight
    assert lm.lm_head.weight is embeddings
    assert lm.lm_head.weight.data_ptr() == embeddings.data_ptr()
    # Every tensor of the language model is one of the encoder's: nothing was copied or allocated.
    assert {p.data_ptr() for p in lm.parameters()} <= {p.data_ptr() for p in encoder.parameters()}
    assert not any(p.is_meta for p in lm.parameters())


def test_the_constrained_critic_answer_parses_on_random_weights(tiny_engine):
    llm, calls, events = encoder_llm(tiny_engine)
    system = CRITIC_SYSTEM.format(style=STYLE_NATURAL)
    messages = [{"role": "system", "content": system}, {"role": "user", "content": CRITIC_REPORT}]
    schema = bounded_schema(critic_schema())
    free = llm.generate(messages, schema=None, temperature=0.4, max_new_tokens=60, seed=1, purpose="critique")
    with pytest.raises(ValueError):  # unconstrained, random weights write no JSON at all
        parse_reply(free.text, CriticAnswer)
    for seed in (1, 2):
        made = llm.generate(messages, schema=schema, temperature=0.4, max_new_tokens=longest_answer(schema),
                            seed=seed, purpose="critique")
        assert made.finished
        answer = parse_reply(made.text, CriticAnswer)
        assert answer.action in ("more_seeds", "variety", "revise") and answer.reason
    # The same seed samples the same answer.
    again = llm.generate(messages, schema=schema, temperature=0.4, max_new_tokens=longest_answer(schema), seed=2,
                         purpose="critique")
    assert again.text == made.text
    writing = [e for e in events if e.kind == "writing"]
    assert writing and writing[-1].data["tokens"] > 0 and writing[-1].data["tokens_per_second"] > 0


@pytest.mark.slow
def test_the_constrained_dreamer_answer_parses_on_random_weights(tiny_engine):
    llm, calls, _ = encoder_llm(tiny_engine)
    messages = [{"role": "system", "content": system_prompt(ZIMAGE)},
                {"role": "user", "content": user_message("a red fox in the rain", ZIMAGE, 2)}]
    schema = bounded_schema(dreams_schema(2))
    made = llm.generate(messages, schema=schema, temperature=0.9, max_new_tokens=longest_answer(schema), seed=5,
                        purpose="expand")
    assert len(parse_reply(made.text, Dreams).expansions) == 2


def test_bounded_schema_bounds_every_free_string():
    schema = bounded_schema(critic_schema())
    for branch in schema["oneOf"]:
        assert branch["additionalProperties"] is False
        assert branch["properties"]["prompt"]["maxLength"] == 1000
        assert branch["properties"]["reason"]["maxLength"] == 300
        assert "maxLength" not in branch["properties"]["action"]
    longest = {"action": "more_seeds", "reason": "r" * 300, "negative": "n" * 400, "prompt": "p" * 1000}
    assert longest_answer(schema) >= len(json.dumps(longest, separators=(",", ":")))


def test_structured_records_backend_model_seed_and_tokens(tiny_engine):
    llm, calls, _ = encoder_llm(tiny_engine)
    answer = llm.structured(CRITIC_SYSTEM.format(style=STYLE_NATURAL), CRITIC_REPORT, CriticAnswer,
                            purpose="critique", json_schema=critic_schema(), temperature=0.4, seed=11)
    assert isinstance(answer, CriticAnswer)
    [call] = calls
    assert call["backend"] == "encoder" and call["model"] == "tiny encoder" and call["seed"] == 11
    assert call["prompt_tokens"] > 0 and call["completion_tokens"] > 0 and call["ok"]
    request = json.loads(call["request_json"])
    assert request["thinking"] is False and request["sampling"]["seed"] == 11


def test_unusable_generation_falls_back_with_one_notice(home):
    """The encoder backend on the tiny engine, asked for: its random prompts share no word with the
    idea, so the formula expander takes over, saying so once; every call is in llm_calls."""
    from reverie.orchestrator.studio import Studio

    (home / "reverie.toml").write_text('[llm]\nbackend = "encoder"\nretries = 0\n')
    events = []
    with Studio(home=home, engine="tiny") as studio:
        result = studio.make("a red fox in the rain", n=2, rounds=2, seed=7, progress=events.append)
        calls = studio.store.llm_calls(result.run_id)
    unusable = [m for m in result.notices if "unusable" in m]
    assert len(unusable) == 1 and "shares no word with the idea" in unusable[0]
    assert any("text encoder, in this process" in m for m in result.notices)
    [embedded] = [m for m in result.notices if m.startswith("embedded default")]
    assert "formula" not in embedded  # the encoder, not the formula, is what was asked for
    assert len(result.renders) == 4 and {r.prompt for r in result.renders}
    expand = [c for c in calls if c["purpose"] == "expand"]
    assert expand and all(c["backend"] == "encoder" and c["seed"] is not None for c in calls)
    assert all(c["completion_tokens"] > 0 and c["prompt_tokens"] > 0 for c in calls)
    assert expand[0]["ok"] == 0 and "shares no word" in expand[0]["error"]
    assert any(e.kind == "writing" for e in events)


def test_the_embedded_default_keeps_the_formula_expander(home):
    from reverie.orchestrator.studio import Studio

    with Studio(home=home) as studio:
        result = studio.make("a red fox in the rain", n=1, rounds=1, seed=1)
        assert studio.store.llm_calls() == []
    assert not any("text encoder" in m or "unusable" in m for m in result.notices)
    [line] = [m for m in result.notices if m.startswith("embedded default")]
    assert "offline formula expander" in line


def test_llm_path_runs_a_causal_lm_folder(home, tiny_lm_dir):
    proc = run_cli("expand", "a quokka and kumquats", "--llm-path", str(tiny_lm_dir), "--json", home=home,
                   env={"REVERIE_HOME": str(home)})
    assert proc.returncode == 0, proc.stderr
    [expansion] = json.loads(proc.stdout)
    assert expansion["source"] == "formula"  # random weights: refused, and the formula wrote it
    notices = [line for line in proc.stderr.splitlines() if "unusable" in line]
    assert len(notices) == 1
    from reverie.store.db import Store

    store = Store(home)
    try:
        calls = store.llm_calls()
    finally:
        store.close()
    assert calls and all(c["backend"] == "local" and c["model"] == str(tiny_lm_dir) for c in calls)
    assert len({c["seed"] for c in calls}) == len(calls)  # each try samples with a new seed


def test_llm_path_answer_parses_and_unload_reloads(tiny_lm_dir):
    settings = llm_settings({"unload": True, "retries": 0}, path=str(tiny_lm_dir), env={})
    assert settings.local and settings.unload and not settings.configured
    loads = folder_loader(settings.path)
    held = []

    def load():
        model, tokenizer = loads()
        held.append(weakref.ref(model))
        return model, tokenizer

    llm = LocalLLM(settings, load, backend="local", model=settings.path)
    for seed in (1, 2):
        answer = llm.structured(CRITIC_SYSTEM.format(style=STYLE_NATURAL), CRITIC_REPORT, CriticAnswer,
                                purpose="critique", json_schema=critic_schema(), seed=seed)
        assert isinstance(answer, CriticAnswer)
        assert not llm.loaded
    gc.collect()
    assert llm.loads == 2 and all(ref() is None for ref in held)  # freed after each call, loaded again

    kept = LocalLLM(llm_settings({"retries": 0}, path=str(tiny_lm_dir), env={}), folder_loader(settings.path),
                    backend="local", model=settings.path)
    for seed in (1, 2):
        kept.structured(CRITIC_SYSTEM.format(style=STYLE_NATURAL), CRITIC_REPORT, CriticAnswer, purpose="critique",
                        json_schema=critic_schema(), seed=seed)
    assert kept.loaded and kept.loads == 1


def test_a_cut_short_answer_is_unusable_not_a_crash(tiny_engine):
    llm, calls, _ = encoder_llm(tiny_engine, max_tokens=5)
    with pytest.raises(LLMUnavailable, match="cut short at 5 tokens"):
        llm.structured(CRITIC_SYSTEM.format(style=STYLE_NATURAL), CRITIC_REPORT, CriticAnswer, purpose="critique",
                       json_schema=critic_schema(), seed=1)
    assert calls[0]["completion_tokens"] == 5 and not calls[0]["ok"]


def test_an_encoder_that_cannot_write_is_named():
    from transformers import CLIPTextConfig, CLIPTextModel

    clip = CLIPTextModel(CLIPTextConfig(hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                        num_attention_heads=1, vocab_size=16))
    assert "no causal language model" in can_generate(clip)
    with pytest.raises(ReverieError, match="CLIPTextModel"):
        causal_lm_over(clip)


@pytest.mark.parametrize("args, toml, says", [
    (["--llm-path", "/nonexistent/Qwen3-8B"], "", "not a Hugging Face model folder"),
    ([], '[llm]\nbackend = "gpt"\n', "use one of auto, server, encoder, off"),
    ([], '[llm]\nunload = "yes"\n', "unload"),
])
def test_bad_llm_settings_are_one_line(home, args, toml, says):
    if toml:
        (home / "reverie.toml").write_text(toml)
    proc = run_cli("make", "a fox", "--n", "1", "--rounds", "1", *args, home=home)
    assert proc.returncode == 2
    assert proc.stderr.count("error:") == 1 and says in proc.stderr and "Traceback" not in proc.stderr


def test_encoder_bench_prints_tokens_per_second_and_share(tiny_models_dir, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "bench" / "bench_encoder.py"
    spec = importlib.util.spec_from_file_location("bench_encoder", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--n", "1", "--rounds", "1", "--models-dir", str(tiny_models_dir)])
    printed = capsys.readouterr().out
    assert "tokens/s" in printed and "of the run's" in printed and "ratio local-LLM / formula" in printed
    local = result["local"]
    assert local["calls"] >= 1 and local["tokens"] > 0 and 0 < local["share"] < 1
    assert result["formula"]["calls"] == 0


def test_the_progress_line_says_writing_the_prompt_with_tokens_per_second(capsys):
    from reverie.cli.common import CliProgress
    from reverie.types import Event

    progress = CliProgress()
    progress(Event("run_started", {"run_id": "r1", "budget": 4}))
    progress(Event("writing", {"purpose": "expand", "tokens": 120, "tokens_per_second": 41.6}))
    progress.stop()
    assert "writing the prompt… 120 tokens, 42/s" in capsys.readouterr().err


@pytest.mark.parametrize("marked_tiny, writes", [(False, "encoder"), (True, "formula")])
def test_auto_writes_with_a_real_z_image_encoder_only(home, tiny_models_dir, tmp_path, marked_tiny, writes):
    """No server configured: a Z-Image folder on the diffusers engine gets the encoder dreamer; the
    same folder marked as reverie's tiny random model keeps the formula expander, quietly."""
    from reverie.orchestrator.studio import Studio
    from reverie.render.tiny import TINY_DIR_NAME

    folder = tmp_path / "z-image"
    folder.mkdir()
    for part in (tiny_models_dir / TINY_DIR_NAME).iterdir():
        if part.name != "reverie-tiny.json" or marked_tiny:
            (folder / part.name).symlink_to(part, target_is_directory=part.is_dir())
    events = []
    with Studio(home=home, engine="diffusers", model_path=str(folder)) as studio:
        engine = studio.engine_for(get_profile("z-image-turbo"), events.append)
        expander, critic = studio.expander_and_critic(events.append, engine)
        notices = list(studio.notices)
    if writes == "encoder":
        assert expander.name == "dreamer" and expander.llm.backend == "encoder" and critic.llm is expander.llm
        assert any("text encoder, in this process" in m for m in notices)
    else:
        assert expander.name == "formula" and not any("text encoder" in m for m in notices)


@pytest.mark.parametrize("idea, prompt, says", [
    ("a red fox in the rain", "fox rain", "too short"),
    ("a red fox in the rain", "一只红狐狸坐在雨中的石墙上 fox", "not in English"),
    ("雨中的狐狸", "一只红狐狸坐在雨中的石墙上，毛发湿透", ""),  # a Chinese idea may be answered in Chinese
    ("a red fox in the rain", 'A red fox in the rain under a sign reading "雨"', ""),  # quoted text is not the language
])
def test_unusable_prompts_are_named(idea, prompt, says):
    from reverie.agents.dreamer import prompt_problem

    problem = prompt_problem(idea, prompt)
    assert (says in problem) if says else problem == ""


def test_the_encoder_writes_on_the_engine_thread_taking_turns_with_renders(home):
    """The engine's own encoder is shared with rendering: each generation runs as a job of the
    engine worker (between renders, never beside one, never while a model switch unloads it)."""
    import threading

    from reverie.agents.local_llm import LocalLLM
    from reverie.orchestrator.studio import Studio

    (home / "reverie.toml").write_text('[llm]\nbackend = "encoder"\nretries = 0\n')
    threads = []
    original = LocalLLM.generate

    def observed(self, *args, **kwargs):  # the real generation, with the thread it ran on noted
        threads.append(threading.current_thread().name)
        return original(self, *args, **kwargs)

    LocalLLM.generate = observed
    try:
        with Studio(home=home, engine="tiny") as studio:
            result = studio.make("a red fox in the rain", n=2, rounds=2, seed=7)
    finally:
        LocalLLM.generate = original
    assert threads and set(threads) == {"reverie-lane-local"}, threads
    assert len(result.renders) == 4
