"""The LLM client: the real `openai` client over HTTP against the scripted server in tests/openai_server.py."""

from __future__ import annotations

import json
import socket

import pytest

from reverie.agents.dreamer import system_prompt
from reverie.agents.llm import extract_json, llm_settings
from reverie.orchestrator.studio import Studio
from reverie.profiles import get_profile
from reverie.types import ReverieError, sha256_text
from tests.conftest import run_cli
from tests.openai_server import Reply, ScriptedLLM, json_content

ZIMAGE = get_profile("z-image-turbo")
FOX = ("A red fox sits on a mossy stone wall in steady rain, its wet fur darkened to rust, amber eyes watching "
       "the lane. Behind it a stone cottage glows through the drizzle; puddles mirror the window light.")


def dreams(*prompts: str, negative: str = "") -> str:
    return json_content({"expansions": [{"interpretation": f"reading {i}", "prompt": p, "negative": negative}
                                        for i, p in enumerate(prompts)]})


def collect():
    events = []
    return events, events.append


def notices(events) -> list[str]:
    return [e.data["message"] for e in events if e.kind == "notice"]


def test_valid_expansion_is_parsed_and_recorded(tmp_path):
    with ScriptedLLM([Reply(dreams(FOX))]) as llm, Studio(home=tmp_path, llm_url=llm.url) as studio:
        events, progress = collect()
        expander, critic = studio.expander_and_critic(progress)
        [expansion] = expander.expand("a fox in the rain", ZIMAGE)
        calls = studio.store.llm_calls()
        body = llm.chat_requests[0]

    assert expansion.source == "dreamer" and expansion.prompt == FOX and expansion.reason == "reading 0"
    assert expansion.model == "scripted-model"  # no model configured: the server's first
    assert expansion.system_hash == sha256_text(system_prompt(ZIMAGE))
    assert body["response_format"]["type"] == "json_schema"
    assert body["messages"][0]["content"] == system_prompt(ZIMAGE)
    assert "a fox in the rain" in body["messages"][1]["content"]
    assert [c["purpose"] for c in calls] == ["models", "expand"]
    expand_call = calls[1]
    assert expand_call["ok"] == 1 and expand_call["response_text"] == dreams(FOX)
    assert expand_call["system_hash"] == expansion.system_hash and expand_call["model"] == "scripted-model"
    assert expand_call["prompt_tokens"] == 42 and expand_call["completion_tokens"] > 0
    assert expand_call["base_url"] == llm.url and expand_call["run_id"] is None
    assert any("dreamer expander" in m for m in notices(events))


def test_server_without_json_schema_gets_json_in_text(tmp_path):
    fenced = "Sure! Here you go:\n```json\n" + dreams(FOX) + "\n```\nEnjoy."
    with ScriptedLLM([Reply(fenced)], reject_response_format=True) as llm, \
            Studio(home=tmp_path, llm_url=llm.url, llm_model="m1") as studio:
        expander, _ = studio.expander_and_critic(lambda e: None)
        first = expander.expand("a fox in the rain", ZIMAGE)
        calls = studio.store.llm_calls()
        bodies = llm.chat_requests
    assert first[0].prompt == FOX and first[0].model == "m1"
    assert "response_format" in bodies[0] and "response_format" not in bodies[1]
    assert [c["ok"] for c in calls] == [0, 1]
    assert "400" in calls[0]["error"]


def test_malformed_json_is_retried_then_falls_back_with_one_notice(tmp_path):
    garbage = [Reply("I'd love to help! {not json"), Reply('{"expansions": []}'), Reply(raw=b"\x00\xff not http json")]
    with ScriptedLLM(garbage) as llm, Studio(home=tmp_path, llm_url=llm.url, llm_model="m1") as studio:
        events, progress = collect()
        expander, _ = studio.expander_and_critic(progress)
        out = expander.expand("a fox in the rain", ZIMAGE, k=2, seed=5)
        again = expander.expand("a fox in the rain", ZIMAGE, k=2, seed=5)
        calls = studio.store.llm_calls()
        sent = len(llm.chat_requests)
    assert [e.source for e in out] == ["formula", "formula"]
    assert out == again  # the formula fallback is deterministic for idea and seed
    assert sent == 6  # 1 try + 2 retries, for each of the two expands: bounded
    assert len(calls) == 6 and all(c["ok"] == 0 for c in calls)
    fallbacks = [m for m in notices(events) if "offline formula" in m and "unusable" in m]
    assert len(fallbacks) == 1 and "\n" not in fallbacks[0]
    # The retry shows the model its mistake.
    assert "not usable" in llm.chat_requests[1]["messages"][-1]["content"]


def test_server_error_then_valid_answer(tmp_path):
    with ScriptedLLM([Reply(status=500), Reply(dreams(FOX))]) as llm, \
            Studio(home=tmp_path, llm_url=llm.url, llm_model="m1") as studio:
        expander, _ = studio.expander_and_critic(lambda e: None)
        [e] = expander.expand("a fox in the rain", ZIMAGE)
    assert e.source == "dreamer" and e.prompt == FOX


def test_timeout_falls_back_and_the_dead_server_is_not_asked_again(tmp_path):
    (tmp_path / "reverie.toml").write_text('[llm]\nmodel = "slow"\ntimeout = 0.5\nretries = 3\n')
    with ScriptedLLM([Reply(dreams(FOX), delay=30)]) as llm, Studio(home=tmp_path, llm_url=llm.url) as studio:
        events, progress = collect()
        expander, critic = studio.expander_and_critic(progress)
        out = expander.expand("a fox in the rain", ZIMAGE)
        later = expander.expand("a fox at dawn", ZIMAGE)
        c = critic.critique("a fox", out[0], ZIMAGE, 0.4, 0.41, 0.2, [])
        calls = studio.store.llm_calls()
        sent = len(llm.chat_requests)
    assert out[0].source == "formula" and later[0].source == "formula"
    assert c.action == "revise" and c.expansion.source == "critic"  # the rule critic decided
    assert sent == 1  # one timeout, then never again in this run; no retries on a dead server
    assert len(calls) == 1 and "timed out" in calls[0]["error"].lower()
    # It gave up at the configured timeout, not at the server's 30 s delay: "timed out" says so, and
    # no seconds are compared (a loaded machine stretches any measured time).
    assert len([m for m in notices(events) if "unusable" in m]) == 1


def test_connection_refused_falls_back(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Studio(home=tmp_path, llm_url=f"http://127.0.0.1:{port}/v1") as studio:
        events, progress = collect()
        expander, _ = studio.expander_and_critic(progress)
        [e] = expander.expand("a fox in the rain", ZIMAGE)
        calls = studio.store.llm_calls()
    assert e.source == "formula"
    assert [c["purpose"] for c in calls] == ["models"] and calls[0]["ok"] == 0
    assert any("no answer from" in m and "--llm-url" in m for m in notices(events))


def test_settings_precedence():
    env = {"OPENAI_BASE_URL": "http://env/v1", "OPENAI_API_KEY": "env-key"}
    section = {"base_url": "http://toml/v1", "model": "toml-model", "timeout": 5, "retries": 1}
    assert llm_settings(section, url="http://cli/v1", model="cli-model", env=env).base_url == "http://cli/v1"
    s = llm_settings(section, env=env)
    assert (s.base_url, s.model, s.api_key, s.timeout, s.retries) == ("http://toml/v1", "toml-model", "env-key", 5.0, 1)
    assert llm_settings({}, env=env).base_url == "http://env/v1"
    assert not llm_settings({}, env={}).configured
    only_key = llm_settings({}, env={"OPENAI_API_KEY": "k"})
    assert only_key.configured and only_key.url == "https://api.openai.com/v1" and only_key.model


def test_no_llm_means_formula_and_rules(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with Studio(home=tmp_path) as studio:
        events, progress = collect()
        expander, critic = studio.expander_and_critic(progress)
    assert expander.name == "formula" and critic.name == "rules"
    assert any("no LLM configured" in m for m in notices(events))


def test_bad_config_file_is_one_line(tmp_path):
    (tmp_path / "reverie.toml").write_text("[llm\nbase_url = ")
    with pytest.raises(ReverieError) as e:
        Studio(home=tmp_path)
    assert "reverie.toml" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ReverieError, match="does not exist"):
        Studio(home=tmp_path / "other", config=tmp_path / "missing.toml")


@pytest.mark.parametrize("text, expected", [
    ('{"a": 1}', {"a": 1}),
    ('Here:\n```json\n{"a": 2}\n```', {"a": 2}),
    ('<think>{"draft": 0}</think> final {"a": 3} trailing', {"a": 3}),
    ('noise {broken then {"a": 4}', {"a": 4}),
    ('```\n{"a": {"b": [1, 2]}}\n```', {"a": {"b": [1, 2]}}),
])
def test_extract_json(text, expected):
    assert extract_json(text) == expected


def test_extract_json_without_object():
    with pytest.raises(ValueError):
        extract_json("no json here [1, 2]")


def test_notice_names_the_model_the_server_lists_first(home):
    """No model configured: the notice names the one the client picked from /models, not 'first listed'."""
    models = ("local-qwen-7b", "another-model")
    with ScriptedLLM(responder=lambda body: Reply(dreams(FOX)), models=models) as llm:
        proc = run_cli("expand", "a fox in the rain", "--llm-url", llm.url, "--json", home=home)
        with Studio(home=home, engine="tiny", llm_url=llm.url) as studio:
            events, progress = collect()
            result = studio.make("a fox in the rain", n=1, rounds=1, seed=3, megapixels=0.01, progress=progress)
            calls = studio.store.llm_calls(result.run_id)
    assert proc.returncode == 0, proc.stderr
    [line] = [ln for ln in proc.stderr.splitlines() if "dreamer expander" in ln]
    assert "local-qwen-7b" in line and "first listed" not in line and "another-model" not in line
    [notice] = [m for m in notices(events) if "dreamer expander" in m]
    assert "local-qwen-7b" in notice and llm.url in notice
    # The /models call that chose it belongs to the run, like every other call.
    assert [c["purpose"] for c in calls] == ["models", "expand"] and json.loads(calls[0]["response_text"]) == list(models)


def test_notice_names_the_configured_model_without_listing(tmp_path):
    with ScriptedLLM(responder=lambda body: Reply(dreams(FOX)), models=("not-this-one",)) as llm, \
            Studio(home=tmp_path, llm_url=llm.url, llm_model="m1") as studio:
        events, progress = collect()
        studio.expander_and_critic(progress)
        calls = studio.store.llm_calls()
    [notice] = [m for m in notices(events) if "dreamer expander" in m]
    assert "(model m1)" in notice and "not-this-one" not in notice
    assert calls == []  # a named model needs no /models call
