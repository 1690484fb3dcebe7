"""The dreamer expander and the critic over a scripted OpenAI-compatible server, in real runs."""

from __future__ import annotations

import json
import sqlite3

import pytest

from reverie.agents.dreamer import DREAMER_NATURAL, system_prompt
from reverie.agents.expander import FormulaExpander
from reverie.agents.formula import expand_formula
from reverie.orchestrator.studio import Studio
from reverie.profiles import get_profile
from tests.conftest import run_cli
from tests.openai_server import Reply, ScriptedLLM, json_content
from tests.test_llm import FOX, dreams

SDXL, PONY, ZIMAGE = get_profile("sdxl"), get_profile("pony"), get_profile("z-image-turbo")
REVISED = ("A red fox curled beneath a dripping fern at dawn, seen from ground level, rain beading on its "
           "whiskers, soft blue light filtering through the forest, photographed with an 85mm lens.")


def expand_with(llm: ScriptedLLM, home, profile, idea="a fox in the rain", k=1):
    with Studio(home=home, llm_url=llm.url, llm_model="m1") as studio:
        expander, _ = studio.expander_and_critic(lambda e: None)
        return expander.expand(idea, profile, k=k)


def test_sdxl_gets_weighted_tags_and_a_negative(tmp_path):
    tags = "1fox, (red fox:1.3), sitting, rain, wet fur, (stone wall:1.1), cottage, dusk, cinematic lighting"
    with ScriptedLLM([Reply(dreams(tags, negative="cartoon, extra legs"))]) as llm:
        [e] = expand_with(llm, tmp_path, SDXL)
        system = llm.chat_requests[0]["messages"][0]["content"]
    assert "tags" in system and SDXL.quality_tags in system
    assert e.prompt.startswith(SDXL.quality_tags + ", ") and "(red fox:1.3)" in e.prompt
    assert e.negative.startswith("cartoon, extra legs") and "worst quality" in e.negative


def test_pony_prompt_starts_with_score_tags(tmp_path):
    # The LLM forgot the quality tags; they are put back in front.
    with ScriptedLLM([Reply(dreams("1girl, (knight:1.2), silver armour, castle, sunset"))]) as llm:
        [e] = expand_with(llm, tmp_path, PONY, idea="a knight at sunset")
    assert e.prompt.startswith("score_9, score_8_up, score_7_up")
    assert "score_4" in e.negative
    assert expand_formula("a knight", PONY).prompt.startswith("score_9, score_8_up")


def test_z_image_gets_natural_language_and_no_negative(tmp_path):
    with ScriptedLLM([Reply(dreams(FOX, negative="ignored, because CFG is 1"))]) as llm:
        [e] = expand_with(llm, tmp_path, ZIMAGE)
        system = llm.chat_requests[0]["messages"][0]["content"]
    assert system == system_prompt(ZIMAGE) and "80 to 150 words" in system and "Chinese" in system
    assert e.prompt == FOX and e.negative == ""
    assert "Chinese" not in system_prompt(get_profile("flux1-dev"))
    assert system_prompt(get_profile("flux1-dev")).startswith(DREAMER_NATURAL[:40])


def test_k_interpretations(tmp_path):
    answers = [FOX, "A fox kit shelters under a red umbrella at a bus stop in the city rain...",
               "A watercolor of a fox running through a rain-soaked wheat field under storm clouds..."]
    with ScriptedLLM([Reply(dreams(*answers))]) as llm:
        out = expand_with(llm, tmp_path, ZIMAGE, k=3)
        user = llm.chat_requests[0]["messages"][1]["content"]
    assert "3 prompts, each a different interpretation" in user
    assert [e.prompt for e in out] == answers and len({e.reason for e in out}) == 3


def test_short_answer_is_topped_up_by_the_formula(tmp_path):
    with ScriptedLLM([Reply(dreams(FOX))]) as llm:
        out = expand_with(llm, tmp_path, ZIMAGE, k=2)
    assert [e.source for e in out] == ["dreamer", "formula"]


def test_quoted_text_must_survive_verbatim(tmp_path):
    idea = 'a neon sign that says "OPEN 24h" and 「夜市」 above a noodle stand'
    lost = dreams("A glowing neon sign reads OPEN above a noodle stand at night...")
    kept = dreams('A noodle stand at night under a pink neon sign reading "OPEN 24h" and a red sign with 「夜市」 in brush script.')
    with ScriptedLLM([Reply(lost), Reply(kept)]) as llm:
        [e] = expand_with(llm, tmp_path, ZIMAGE, idea=idea)
        retry = llm.chat_requests[1]["messages"][-1]["content"]
    assert "OPEN 24h" in e.prompt and "夜市" in e.prompt
    assert "OPEN 24h" in retry and "verbatim" in retry


def test_formula_is_deterministic_per_idea_and_seed():
    a = FormulaExpander().expand("a fox in the rain", ZIMAGE, k=3, seed=7)
    b = FormulaExpander().expand("a fox in the rain", ZIMAGE, k=3, seed=7)
    assert a == b and len({e.prompt for e in a}) > 1
    assert all(e.prompt.startswith("A fox in the rain") for e in a)


def _director(body: dict) -> Reply:
    """Dreamer requests get an expansion; critic requests get a revision with a reason."""
    system = body["messages"][0]["content"]
    if system.startswith("You are the art director"):
        report = json.loads(body["messages"][1]["content"])
        assert report["idea"] == "a fox in the rain" and report["images"]
        return Reply(json_content({"action": "revise", "reason": "Faithfulness is low: the fox is too small.",
                                   "prompt": REVISED}))
    return Reply(dreams(FOX))


def test_critic_revision_becomes_a_child_prompt(home):
    with ScriptedLLM(responder=_director) as llm, Studio(home=home, engine="tiny", llm_url=llm.url) as studio:
        result = studio.make("a fox in the rain", n=1, rounds=2, seed=3, megapixels=0.01)
        prompts = studio.store.prompts(result.run_id)
        calls = studio.store.llm_calls(result.run_id)
    first, second = prompts
    assert first["source"] == "dreamer" and first["text"] == FOX and first["parent_id"] is None
    assert first["model"] == "scripted-model" and first["system_hash"]
    assert second["source"] == "critic" and second["text"] == REVISED
    assert second["parent_id"] == first["id"] and second["round"] == 1
    assert second["reason"] == "Faithfulness is low: the fox is too small."
    assert [c["purpose"] for c in calls] == ["models", "expand", "critique"] and all(c["ok"] for c in calls)
    assert {r.prompt for r in result.renders} == {FOX, REVISED}


@pytest.mark.slow  # a full subprocess run with torch imports: ~25 s on a shared 2-core box
def test_cli_make_with_llm_url_end_to_end(home):
    with ScriptedLLM(responder=_director) as llm:
        proc = run_cli("make", "a fox in the rain", "--n", "1", "--rounds", "2", "--seed", "1", "--megapixels", "0.01",
                       "--engine", "tiny", "--llm-url", llm.url, "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["renders"] == 2
    db = sqlite3.connect(home / "reverie.db")
    sources = [r[0] for r in db.execute("select source from prompts where run_id = ? order by id", [out["run_id"]])]
    purposes = [r[0] for r in db.execute("select purpose from llm_calls where run_id = ? order by id", [out["run_id"]])]
    assert sources == ["dreamer", "critic"] and purposes == ["models", "expand", "critique"]
    assert "dreamer expander" in proc.stderr


def test_cli_expand_prints_expansions(home):
    answers = [FOX, "A fox kit shelters under a red umbrella at a bus stop in the city rain."]
    with ScriptedLLM([Reply(dreams(*answers))]) as llm:
        proc = run_cli("expand", "a fox in the rain", "--k", "2", "--llm-url", llm.url, "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    assert [e["prompt"] for e in json.loads(proc.stdout)] == answers
    assert not list(home.glob("images/*/*.png"))  # nothing rendered

    text = run_cli("expand", "a knight at sunset", "--profile", "sdxl", home=home)
    assert text.returncode == 0, text.stderr
    assert "formula" in text.stdout and "masterpiece" in text.stdout and "Negative prompt:" in text.stdout

    bad = run_cli("expand", "a fox", "--k", "0", home=home)
    assert bad.returncode == 2 and "k must be between" in bad.stderr and "Traceback" not in bad.stderr


def test_formula_lighting_never_contradicts_the_idea():
    from reverie.agents.formula import expand_formula
    from reverie.profiles import get_profile

    profile = get_profile("z-image-turbo")
    for seed in range(40):
        rain = expand_formula("a fox in the rain", profile, seed).prompt.lower()
        assert "morning light" not in rain and "golden-hour" not in rain
        night = expand_formula("a lighthouse at night", profile, seed).prompt.lower()
        assert "morning light" not in night and "golden-hour" not in night and "overcast" not in night
