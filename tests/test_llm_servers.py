"""LLM servers as they really answer: wrong model names, wrong paths, web pages, short or garbled
replies. The real `openai` client and the real CLI against the scripted server."""

from __future__ import annotations

import json

import pytest

from reverie.agents.critic import CriticAnswer
from reverie.agents.dreamer import prompt_problem
from reverie.orchestrator.studio import Studio
from reverie.profiles import get_profile
from tests.conftest import run_cli
from tests.openai_server import Reply, ScriptedLLM, json_content
from tests.test_llm import FOX, dreams

ZIMAGE = get_profile("z-image-turbo")
REVISED = "A red fox curled beneath a dripping fern at dawn, rain beading on its whiskers, soft blue forest light."


def notice_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("reverie:")]


def expand_cli(llm: ScriptedLLM, home, *extra: str) -> tuple[list[dict], str]:
    proc = run_cli("expand", "a fox in the rain", "--llm-url", llm.url, "--json", *extra, home=home)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "Error:" not in proc.stderr
    return json.loads(proc.stdout), proc.stderr


def test_max_tokens_is_sent_per_purpose_and_configurable(tmp_path):
    with ScriptedLLM(responder=lambda body: Reply(dreams(FOX, FOX.replace("red", "grey")))) as llm:
        expand_cli(llm, tmp_path, "--llm-model", "m1", "--k", "2")
        (tmp_path / "reverie.toml").write_text("[llm]\nmax_tokens = 123\n")
        expand_cli(llm, tmp_path, "--llm-model", "m1")
        sent = [b["max_tokens"] for b in llm.chat_requests]
    assert 600 <= sent[0] <= 2000 and sent[1] == 123


@pytest.mark.parametrize("status", [400, 404])
def test_unknown_model_is_named_with_the_models_the_server_lists(tmp_path, status):
    with ScriptedLLM(models=("qwen2.5:7b", "llama3.2"), unknown_model_status=status) as llm:
        out, stderr = expand_cli(llm, tmp_path, "--llm-model", "qwen-7b")
        bodies = llm.chat_requests
    assert [e["source"] for e in out] == ["formula"]
    assert len(bodies) == 1 and "response_format" in bodies[0]  # the schema was not blamed: one request
    [line] = [ln for ln in notice_lines(stderr) if "unusable" in ln]
    assert "'qwen-7b'" in line and "--llm-model" in line and "qwen2.5:7b, llama3.2" in line
    assert "does not exist or you do not have access" in line  # the server's own words


def test_schema_400_turns_the_schema_off_but_other_400s_do_not(tmp_path):
    with ScriptedLLM(responder=lambda body: Reply(dreams(FOX)), reject_response_format=True) as llm:
        out, _ = expand_cli(llm, tmp_path, "--llm-model", "m1")
        schema_off = ["response_format" in b for b in llm.chat_requests]
    assert out[0]["source"] == "dreamer" and schema_off == [True, False]

    too_long = "This model's maximum context length is 4096 tokens, but you requested 9000 tokens."
    with ScriptedLLM([Reply(status=400, content=too_long)]) as llm:
        out, stderr = expand_cli(llm, tmp_path, "--llm-model", "m1")
        sent = len(llm.chat_requests)
    assert out[0]["source"] == "formula" and sent == 1
    [line] = [ln for ln in notice_lines(stderr) if "unusable" in ln]
    assert "refused the request (400: This model's maximum context length is 4096 tokens" in line


def test_wrong_path_404_says_check_the_url(tmp_path):
    with ScriptedLLM([Reply(status=404, content="Not Found")]) as llm:
        out, stderr = expand_cli(llm, tmp_path, "--llm-model", "m1")
    [line] = [ln for ln in notice_lines(stderr) if "unusable" in ln]
    assert out[0]["source"] == "formula" and "404: Not Found" in line and "--llm-url" in line


def test_failed_model_listing_suggests_llm_model(tmp_path):
    with ScriptedLLM(models_status=403) as llm:
        out, stderr = expand_cli(llm, tmp_path)
    [line] = [ln for ln in notice_lines(stderr) if "unusable" in ln]
    assert out[0]["source"] == "formula"
    assert "cannot list models" in line and "--llm-model" in line and "listing models is not allowed" in line


@pytest.mark.parametrize("model", [None, "m1"])
def test_html_page_at_the_llm_url_falls_back_with_one_notice(tmp_path, model):
    """A web UI's address instead of its API: 200 with HTML. Offline fallback, one line, exit 0."""
    with ScriptedLLM(html=True) as llm:
        out, stderr = expand_cli(llm, tmp_path, *(["--llm-model", model] if model else []))
        with Studio(home=tmp_path, llm_url=llm.url, llm_model=model) as studio:
            expander, critic = studio.expander_and_critic(lambda e: None)
            expander.expand("a fox", ZIMAGE)
            critique = critic.critique("a fox", out_expansion(out), ZIMAGE, 0.4, 0.41, 0.1, [])
        chat_posts = len(llm.chat_requests)
    assert [e["source"] for e in out] == ["formula"]
    unusable = [ln for ln in notice_lines(stderr) if "unusable" in ln]
    assert len(unusable) == 1 and "--llm-url" in unusable[0]
    assert ("HTML page" in unusable[0]) if model else ("not an OpenAI model list" in unusable[0])
    assert critique.action == "revise"  # the rule critic decided
    assert chat_posts == (2 if model else 0)  # one per CLI run and one per studio: a web page is not retried


def out_expansion(out: list[dict]):
    from reverie.types import Expansion

    return Expansion(prompt=out[0]["prompt"], negative=out[0]["negative"], source=out[0]["source"])


def test_expansion_schema_asks_for_exactly_k_and_padding_is_announced(tmp_path):
    with ScriptedLLM([Reply(dreams(FOX))]) as llm:
        out, stderr = expand_cli(llm, tmp_path, "--llm-model", "m1", "--k", "3")
        schema = llm.chat_requests[0]["response_format"]["json_schema"]["schema"]
    items = schema["properties"]["expansions"]
    assert items["minItems"] == 3 and items["maxItems"] == 3
    assert [e["source"] for e in out] == ["dreamer", "formula", "formula"]
    assert any("wrote 1 of the 3 prompts" in ln and "formula" in ln for ln in notice_lines(stderr))


def test_critic_schema_requires_a_prompt_for_revise(tmp_path):
    no_prompt = json_content({"action": "revise", "reason": "the scores stalled"})
    good = json_content({"action": "revise", "reason": "the scores stalled", "prompt": REVISED})
    with pytest.raises(ValueError):
        CriticAnswer.model_validate({"action": "revise", "reason": "r"})
    with ScriptedLLM([Reply(no_prompt), Reply(good)]) as llm, \
            Studio(home=tmp_path, llm_url=llm.url, llm_model="m1") as studio:
        _, critic = studio.expander_and_critic(lambda e: None)
        c = critic.critique("a fox in the rain", out_expansion([{"prompt": FOX, "negative": "", "source": "dreamer"}]),
                            ZIMAGE, 0.4, 0.41, 0.1, [])
        schema = llm.chat_requests[0]["response_format"]["json_schema"]["schema"]
        calls = studio.store.llm_calls()
    revise = [branch for branch in schema["oneOf"] if branch["properties"]["action"].get("const") == "revise"]
    assert revise and "prompt" in revise[0]["required"] and revise[0]["properties"]["prompt"]["minLength"] == 1
    assert c.action == "revise" and c.expansion.prompt == REVISED
    assert [call["ok"] for call in calls] == [0, 1] and "revised prompt" in calls[0]["error"]


def test_garbled_prompts_are_malformed_answers(tmp_path):
    """`}]}{` and a prompt about something else are retried, then the offline expander takes over."""
    garbled = [Reply(dreams("}]}{")), Reply(dreams("A bowl of ramen on a wooden table")), Reply(dreams("}]}{"))]
    with ScriptedLLM(garbled) as llm:
        out, stderr = expand_cli(llm, tmp_path, "--llm-model", "m1")
        retries = [b["messages"][-1]["content"] for b in llm.chat_requests[1:]]
    assert [e["source"] for e in out] == ["formula"]
    assert "mostly punctuation" in retries[0] and "shares no word with the idea" in retries[1]
    [line] = [ln for ln in notice_lines(stderr) if "unusable" in ln]
    assert "3 tries" in line


@pytest.mark.parametrize("idea, prompt, ok", [
    ("a fox in the rain", "A red fox sits in steady rain", True),
    ("a fox in the rain", "foxes, rainy street, (wet fur:1.2)", True),
    ("cyberpunk city", "neon cities at night", True),
    ("a fox in the rain", "a cat on a sofa", False),
    ("a fox in the rain", "}]}{", False),
    ("a fox in the rain", "", False),
    ("un renard sous la pluie", "A red fox in the rain", True),  # translated: no shared word, and right
    ("雨中的狐狸", "A red fox in the rain", True),
])
def test_prompt_sanity_check(idea, prompt, ok):
    assert (prompt_problem(idea, prompt) == "") == ok


def test_llm_timeout_option(tmp_path):
    """--llm-timeout beats the default 60 s: the server's 30 s delay ends in the offline fallback."""
    with ScriptedLLM([Reply(dreams(FOX), delay=30)]) as llm:
        out, stderr = expand_cli(llm, tmp_path, "--llm-model", "m1", "--llm-timeout", "0.5")
    [line] = [ln for ln in notice_lines(stderr) if "unusable" in ln]
    assert out[0]["source"] == "formula" and "timed out" in line.lower()
    bad = run_cli("expand", "a fox", "--llm-timeout", "0", home=tmp_path)
    assert bad.returncode == 2 and "--llm-timeout" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
