"""The TextGenerate dreamer against the scripted ComfyUI: the server's own text encoder writes prompts."""

from __future__ import annotations

import json

from reverie.agents.comfy_dreamer import INSTRUCTION, TextGenerateExpander, comfy_expander
from reverie.agents.expander import FormulaExpander
from reverie.profiles import get_profile
from reverie.types import sha256_text
from tests.comfy_server import NODES, ComfyServer
from tests.test_comfy_preflight import ZIMAGE_FILES
from tests.test_comfyui import engine_for

PARAGRAPH = ("A red fox sits in cold autumn rain on a mossy stone wall, its fur darkened and beaded with water, "
             "amber eyes on the camera; shot on a 35mm lens at dusk, soft grey light, muted greens and rust.")


def reply(prompt: str, inputs: dict) -> str:
    return f"<think></think>\n{PARAGRAPH} Seed {inputs['sampling_mode.seed']}."


def test_textgen_expansion_is_used_when_the_server_has_the_encoder():
    calls, notices = [], []
    with ComfyServer(models=ZIMAGE_FILES, text_reply=reply) as s:
        expander = comfy_expander(engine_for(s), FormulaExpander(), notice=notices.append, record=calls.append)
        assert isinstance(expander, TextGenerateExpander)
        out = expander.expand("a fox in the rain", get_profile("z-image-turbo"), k=2, seed=5)
        workflows = list(s.workflows)
    assert [e.source for e in out] == ["textgen", "textgen"] and not notices
    assert [e.prompt for e in out] == [f"{PARAGRAPH} Seed 5.", f"{PARAGRAPH} Seed 6."]
    assert out[0].model == "ComfyUI TextGenerate qwen_3_4b.safetensors" and out[0].system_hash == sha256_text(INSTRUCTION)
    # The workflow: the Z-Image encoder through CLIPLoader type lumina2, TextGenerate, PreviewAny.
    first = workflows[0]
    assert first["1"] == {"class_type": "CLIPLoader", "inputs": {"clip_name": "qwen_3_4b.safetensors", "type": "lumina2"}}
    gen = first["2"]["inputs"]
    assert first["2"]["class_type"] == "TextGenerate" and gen["clip"] == ["1", 0] and "Idea: a fox in the rain" in gen["prompt"]
    assert gen["sampling_mode"] == "on" and gen["sampling_mode.seed"] == 5 and gen["thinking"] is False
    assert first["3"] == {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}}
    # Recorded like any LLM call: prompt, sampling settings and seed.
    assert [c["purpose"] for c in calls] == ["expand", "expand"] and all(c["ok"] for c in calls)
    request = json.loads(calls[1]["request_json"])
    assert request["sampling"]["seed"] == 6 and request["prompt"] == workflows[1]["2"]["inputs"]["prompt"]
    assert calls[0]["base_url"] == s.url and calls[0]["response_text"].startswith("<think>")


def test_formula_expander_when_the_server_lacks_the_encoder_or_the_node():
    with ComfyServer(models={**ZIMAGE_FILES, "clip_name": ["clip_l.safetensors"]}) as no_encoder:
        assert comfy_expander(engine_for(no_encoder), FormulaExpander()) is None
    old = {k: v for k, v in NODES.items() if k != "TextGenerate"}
    with ComfyServer(models=ZIMAGE_FILES, nodes=old) as no_node:
        assert comfy_expander(engine_for(no_node), FormulaExpander()) is None
    with ComfyServer(models={**ZIMAGE_FILES, "ckpt_name": ["sd_xl_base_1.0.safetensors"]}) as s:
        assert comfy_expander(engine_for(s, profile="sdxl"), FormulaExpander()) is None  # CLIP cannot write
    assert comfy_expander(object(), FormulaExpander()) is None  # not a ComfyUI engine


def test_an_unusable_answer_falls_back_to_the_formula_and_says_so_once():
    sign = ("A weathered wooden sign hangs above a shop door on a rainy street, its painted letters faded, "
            "lit by a warm lamp at dusk.")
    answers = iter(["", "too short", sign])
    notices, calls = [], []
    with ComfyServer(models=ZIMAGE_FILES, text_reply=lambda prompt, inputs: next(answers)) as s:
        expander = comfy_expander(engine_for(s), FormulaExpander(), notice=notices.append, record=calls.append)
        out = expander.expand('a sign that says "OPEN"', get_profile("z-image-turbo"), k=3, seed=1)
    # The third answer lacks the quoted text: the formula expander keeps it.
    assert [e.source for e in out] == ["formula", "formula", "formula"]
    assert len(notices) == 1 and "empty" in notices[0]
    assert [c["ok"] for c in calls] == [False, False, False] and "too short" in calls[1]["error"]
    assert "'OPEN' is not in the answer" in calls[2]["error"]


def test_a_server_that_fails_stops_being_asked():
    notices = []
    with ComfyServer(models=ZIMAGE_FILES, text_reply=reply) as s:
        expander = comfy_expander(engine_for(s, timeout=2.0), FormulaExpander(), notice=notices.append)
    # The server is gone now: one failure, then the formula without asking again.
    out = expander.expand("a fox", get_profile("z-image-turbo"), k=3, seed=0)
    assert [e.source for e in out] == ["formula"] * 3 and expander.dead
    assert len(notices) == 1 and s.url in notices[0]


def test_make_on_comfyui_without_an_llm_uses_the_textgen_dreamer(tmp_path):
    """Wired in the studio: no LLM configured, a ComfyUI engine whose server has the encoder."""
    from reverie import Studio

    with ComfyServer(models=ZIMAGE_FILES, text_reply=reply) as s:
        with Studio(home=tmp_path / "h", engine="comfyui", scorer="heuristic",
                    engine_options={"servers": [s.url]}) as studio:
            result = studio.make("a fox in the rain", n=1, rounds=1, seed=5, megapixels=0.05)
            prompts = studio.store.prompts(result.run_id)
            calls = studio.store.llm_calls(result.run_id)
    assert [p["source"] for p in prompts] == ["textgen"] and prompts[0]["text"].startswith(PARAGRAPH)
    assert [c["purpose"] for c in calls] == ["expand"]  # filed under the run


def test_make_on_comfyui_without_the_encoder_keeps_the_formula(tmp_path):
    from reverie import Studio

    files = {k: v for k, v in ZIMAGE_FILES.items()}
    with ComfyServer(models=files, text_reply=reply, nodes={n: v for n, v in NODES.items() if n != "TextGenerate"}) as s:
        with Studio(home=tmp_path / "h", engine="comfyui", scorer="heuristic",
                    engine_options={"servers": [s.url]}) as studio:
            result = studio.make("a fox in the rain", n=1, rounds=1, seed=5, megapixels=0.05)
            assert [p["source"] for p in studio.store.prompts(result.run_id)] == ["formula"]


# -- issue 27: the dreamer on a real server's terms -------------------------------------------
def test_nothing_is_queued_before_the_render_preflight_passes(tmp_path):
    """A server with TextGenerate and the encoder but no VAE: make is refused by the preflight,
    naming the VAE, and the server never saw a prompt (no encoder loaded for a run it cannot render)."""
    from tests.conftest import run_cli

    with ComfyServer(models={**ZIMAGE_FILES, "vae_name": []}, text_reply=reply) as s:
        done = run_cli("make", "a fox in the rain", "--n", "1", "--rounds", "1", "--megapixels", "0.05",
                       "--comfy-url", s.url, "--scorer", "heuristic", home=tmp_path / "home", timeout=120)
        queued = list(s.prompt_ids)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "ae.safetensors" in done.stderr.strip().splitlines()[-1], done.stderr
    assert queued == []


def test_a_prompt_given_up_on_is_taken_off_the_server():
    """TextGenerate that outlasts the stall timeout: reverie falls back and interrupts its prompt,
    so it does not run on after reverie has left, with the renders queued behind it."""
    import threading

    release = threading.Event()

    def slow(prompt, inputs):
        release.wait(30)
        return PARAGRAPH

    notices = []
    with ComfyServer(models=ZIMAGE_FILES, text_reply=slow) as s:
        expander = comfy_expander(engine_for(s, stall_timeout=1.0), FormulaExpander(), notice=notices.append)
        out = expander.expand("a fox in the rain", get_profile("z-image-turbo"), k=1, seed=3)
        asked = list(s.prompt_ids)
        interrupts, deleted = list(s.interrupts), list(s.deleted)
        release.set()
    assert [e.source for e in out] == ["formula"] and "no answer" in notices[0]
    assert len(asked) == 1 and (interrupts == asked or deleted == asked), (asked, interrupts, deleted)


GIBBERISH = "lasts startling吾بين jogadoraurcannotبين البرلم lasts startling cannot jogadora sulle pareti"


def test_gibberish_is_refused_by_the_check_every_prompt_writer_uses():
    """Random weights write fluent nonsense: 24 tokens sharing no word with the idea, partly in
    another script. The in-process dreamer's check refuses it, and this path uses that same check."""
    from reverie.agents.prompt_check import prompt_problem

    calls, notices = [], []
    with ComfyServer(models=ZIMAGE_FILES, text_reply=lambda prompt, inputs: GIBBERISH) as s:
        expander = comfy_expander(engine_for(s), FormulaExpander(), notice=notices.append, record=calls.append)
        out = expander.expand("a lighthouse at dusk", get_profile("z-image-turbo"), k=1, seed=2)
    assert [e.source for e in out] == ["formula"]
    assert [c["ok"] for c in calls] == [False] and calls[0]["error"] == prompt_problem("a lighthouse at dusk", GIBBERISH)
    assert "shares no word" in calls[0]["error"] and len(notices) == 1
