"""The VLM judge over a scripted OpenAI-compatible server: it receives the top candidates as
images (never one call per image), its notes reach the critic, and its choice leads the final pick."""

from __future__ import annotations

import base64
import io
import json

from PIL import Image

from reverie.agents.critic import LLMCritic
from reverie.agents.expander import FormulaExpander, RuleCritic
from reverie.agents.llm import LLMClient, LLMSettings
from reverie.orchestrator.studio import Studio
from reverie.store.db import Store
from tests.openai_server import Reply, ScriptedLLM, json_content

PROBLEMS = "the fox has no tail and the rain is missing"


def answer(body: dict) -> Reply:
    system = body["messages"][0]["content"]
    if system.startswith("You judge"):
        return Reply(json_content({"best": 3, "reason": "the clearest fox", "problems": PROBLEMS}))
    return Reply(json_content({"action": "more_seeds", "reason": "scores still rise"}))


def image_parts(body: dict) -> list[dict]:
    return [p for p in body["messages"][1]["content"] if isinstance(p, dict) and p.get("type") == "image_url"]


def test_the_judge_sees_the_top_candidates_feeds_the_critic_and_leads_the_pick(tmp_path):
    home = tmp_path / "home"
    with ScriptedLLM(responder=answer) as server:
        home.mkdir()
        (home / "reverie.toml").write_text(f'[judge]\nvlm_url = "{server.url}"\nvlm_model = "scripted-model"\n')
        critic = LLMCritic(LLMClient(LLMSettings(base_url=server.url, model="scripted-model")), fallback=RuleCritic())
        events = []
        with Studio(home=home, engine="fixed", engine_options={"latency": 0.0}, scorer="heuristic",
                    expander=FormulaExpander(), critic=critic) as studio:
            result = studio.make("a fox in the rain", seed=9, n=6, rounds=2, megapixels=0.02, progress=events.append)
        requests = server.chat_requests

    judged = [b for b in requests if b["messages"][0]["content"].startswith("You judge")]
    critiques = [b for b in requests if not b["messages"][0]["content"].startswith("You judge")]
    # Once for the revision after round 1, once for the final pick: 12 images, 2 calls of 4.
    assert len(judged) == 2 and len(critiques) == 1
    for body in judged:
        parts = image_parts(body)
        assert len(parts) == 4
        url = parts[0]["image_url"]["url"]
        assert url.startswith("data:image/jpeg;base64,")
        with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as im:
            assert im.format == "JPEG"
        assert "a fox in the rain" in body["messages"][1]["content"][0]["text"]
    # What the judge found wrong reached the critic's report.
    assert json.loads(critiques[0]["messages"][1]["content"])["judge"] == PROBLEMS

    # Its final choice (the third best by composite) leads the run's best.
    ranked = sorted((r for r in result.renders if r.scores), key=lambda r: (-r.scores.composite, r.id))
    assert result.best[0].id == ranked[2].id
    assert Store(home).judge_pick(result.run_id) == {"render_id": ranked[2].id, "note": "the clearest fox"}
    finals = [e.data for e in events if e.kind == "vlm_judged" and e.data["final"]]
    assert finals and finals[0]["rank"] == 3 and finals[0]["problems"] == PROBLEMS
    assert [c["purpose"] for c in Store(home).llm_calls(result.run_id)].count("judge") == 2


def test_a_judge_that_fails_leaves_the_composite_in_charge(tmp_path):
    home = tmp_path / "home"
    with ScriptedLLM(responder=lambda body: Reply(json_content({"best": 99, "reason": "x"}))) as server:
        home.mkdir()
        (home / "reverie.toml").write_text(f'[judge]\nvlm_url = "{server.url}"\nvlm_model = "scripted-model"\n')
        events = []
        with Studio(home=home, engine="fixed", engine_options={"latency": 0.0}, scorer="heuristic",
                    expander=FormulaExpander(), critic=RuleCritic()) as studio:
            result = studio.make("a fox", seed=9, n=3, rounds=1, megapixels=0.02, progress=events.append)
    ranked = sorted((r for r in result.renders if r.scores), key=lambda r: (-r.scores.composite, r.id))
    assert result.best[0].id == ranked[0].id
    assert any("VLM judge: no usable answer" in e.data.get("message", "") for e in events if e.kind == "notice")


def test_a_dead_judge_server_is_said_once_per_session_not_every_round(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on: the judge's server is down
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = tmp_path / "home"
    home.mkdir()
    (home / "reverie.toml").write_text(f'[judge]\nvlm_url = "http://127.0.0.1:{port}/v1"\nvlm_model = "m"\nvlm_timeout = 2\n')
    events = []
    with Studio(home=home, engine="fixed", engine_options={"latency": 0.0}, scorer="heuristic",
                expander=FormulaExpander(), critic=RuleCritic()) as studio:
        for idea in ("a fox", "a lighthouse"):
            studio.make(idea, seed=9, n=2, rounds=3, megapixels=0.02, progress=events.append)
    said = [e.data["message"] for e in events if e.kind == "notice" and "VLM judge: no usable" in e.data.get("message", "")]
    assert len(said) == 1, said
