"""Chat: follow-ups read by rules, four linked rounds in lineage, sessions that survive a restart."""

from __future__ import annotations

import json

import pytest

from reverie.orchestrator.chat import PreviousTurn, RuleInterpreter
from reverie.orchestrator.studio import Studio
from reverie.types import Reference, Render, RenderSpec, Request, ReverieError, Scores
from tests.conftest import run_cli

SMALL = {"n": 2, "rounds": 1, "megapixels": 0.02}


def _previous(request: Request, seeds=(11, 12, 13)) -> PreviousTurn:
    best = [
        Render(id=100 + i, run_id="r1", prompt_id=1, round=0,
               spec=RenderSpec(prompt=f"prompt {i}", seed=s, width=64, height=64, steps=9, guidance=0.0, profile="z-image-turbo"),
               path=f"/h/images/{i}.png", sha256="x", engine="tiny", seconds=0.1,
               scores=Scores(values={}, composite=0.9 - i / 10, scorer="heuristic"))
        for i, s in enumerate(seeds)
    ]
    return PreviousTurn(turn=1, request=request, run_id="r1", best=best, turn_id=1)


FIRST = Request(idea="a woman in a garden", seed=5, aspect="1:1")


def read(message, previous=None, controls=frozenset({"canny", "img2img", "pose", "depth"})):
    return RuleInterpreter(controls).interpret(message, previous, Request(idea=message), fresh_seed=999)


def test_first_message_is_the_idea():
    r = read("a woman in a garden")
    assert r.request.idea == "a woman in a garden" and r.request.seed == 999 and r.source == "rules"


def test_make_it_night_edits_the_idea_and_keeps_the_seed():
    r = read("make it night", _previous(FIRST))
    assert r.request.idea == "a woman in a garden, at night" and r.request.seed == 5


def test_more_like_the_second_one_reuses_its_seed_as_an_img2img_reference():
    r = read("more like the second one", _previous(FIRST))
    assert r.request.seed == 12 and r.ref_render_id == 101
    assert r.request.references == (Reference("/h/images/1.png", "img2img", 0.6),)
    assert r.request.idea == FIRST.idea


def test_keep_the_pose_but_make_her_a_knight():
    r = read("keep the pose but make her a knight", _previous(FIRST))
    assert r.request.idea == "a knight in a garden"  # the subject is replaced, the setting kept
    assert r.request.references[0].control == "pose" and r.request.references[0].path == "/h/images/0.png"
    without_pose = read("keep the pose but make her a knight", _previous(FIRST), frozenset({"canny", "img2img"}))
    assert without_pose.request.references[0].control == "canny" and "no pose weights" in without_pose.summary


def test_wider_taller_and_new_seeds():
    assert read("wider", _previous(FIRST)).request.aspect == "4:3"
    assert read("taller", _previous(FIRST)).request.aspect == "3:4"
    assert read("wider", _previous(Request(idea="x", aspect="21:9"))).request.aspect == "21:9"
    again = read("again with new seeds", _previous(FIRST))
    assert again.request.seed == 999 and again.request.idea == FIRST.idea


def test_anything_else_adds_to_the_description_and_new_starts_over():
    assert read("with a red umbrella", _previous(FIRST)).request.idea == "a woman in a garden, with a red umbrella"
    fresh = read("/new a lighthouse at dusk", _previous(FIRST))
    assert fresh.request.idea == "a lighthouse at dusk" and fresh.request.seed == 999


def test_pointing_past_the_last_images_is_one_clear_line():
    with pytest.raises(ReverieError, match="say a number from 1 to 3"):
        read("more like the 4th one", _previous(FIRST))
    assert read("more like number 3", _previous(FIRST)).request.seed == 13
    assert read("more like the last one", _previous(FIRST)).request.seed == 13


def test_four_turns_make_four_linked_rounds_in_lineage(tmp_path):
    """Done-when: a scripted chat of four turns, one pointing at "the second one"."""
    home = tmp_path / "home"  # the fixed engine needs no tiny weights
    messages = ["a woman in a garden", "make it night", "more like the second one", "again with new seeds"]
    with Studio(home=home, engine="fixed", engine_options={"latency": 0.0}, scorer="heuristic") as studio:
        turns = [studio.chat("garden", m, **SMALL) for m in messages]
        rows = list(studio.store.db.query(
            "select t.* from chat_turns t join chat_sessions s on s.id = t.session_id where s.name = 'garden' order by turn"))
        runs = {r["id"]: r for r in studio.store.db.query("select * from runs")}
    assert [t.turn for t in turns] == [1, 2, 3, 4]
    assert [r["run_id"] for r in rows] == [t.run_id for t in turns] and len(set(r["run_id"] for r in rows)) == 4
    assert rows[0]["parent_run_id"] is None and rows[0]["parent_turn_id"] is None
    for prev, row in zip(rows, rows[1:]):
        assert row["parent_run_id"] == prev["run_id"] and row["parent_turn_id"] == prev["id"]
    second_of_turn_2 = turns[1].best[1]
    assert rows[2]["ref_render_id"] == second_of_turn_2.id
    req3 = json.loads(runs[turns[2].run_id]["request_json"])
    assert req3["seed"] == second_of_turn_2.seed
    assert req3["references"][0]["path"] == second_of_turn_2.path and req3["references"][0]["control"] == "img2img"
    assert json.loads(runs[turns[1].run_id]["request_json"])["idea"] == "a woman in a garden, at night"
    assert json.loads(runs[turns[3].run_id]["request_json"])["seed"] != req3["seed"]
    for t in turns:
        assert len(t.best) == 2 and all(r.scores is not None for r in t.best)
    assert "more like #2" in turns[2].interpretation.summary


def test_session_resumes_after_a_restart(tmp_path):
    home = tmp_path / "home"  # the fixed engine needs no tiny weights
    with Studio(home=home, engine="fixed", engine_options={"latency": 0.0}, scorer="heuristic") as studio:
        first = studio.chat("fox", "a fox in the rain", **SMALL)
    with Studio(home=home, engine="fixed", engine_options={"latency": 0.0}, scorer="heuristic") as studio:
        second = studio.chat("fox", "make it night", **SMALL)
        other = studio.chat("owl", "an owl", **SMALL)
    assert second.turn == 2 and second.parent_run_id == first.run_id
    assert second.interpretation.request.idea == "a fox in the rain, at night"
    assert other.turn == 1 and other.parent_run_id is None


def test_cli_chat_over_stdin(tmp_path):
    home = tmp_path / "home"
    common = ["chat", "--session", "fox", "--n", "2", "--megapixels", "0.02", "--engine", "fixed", "--scorer", "heuristic"]
    r = run_cli(*common, home=home, input="a fox in the rain\n\nmore like the 9th one\nwider\n/quit\nnot read after quit\n")
    assert r.returncode == 0, r.stderr
    assert "session fox" in r.stdout
    assert "turn 1 (run" in r.stdout and "turn 2 (run" in r.stdout and "aspect 4:3" in r.stdout
    images = [line for line in r.stdout.splitlines() if line.endswith(".png")]  # each whole path on its line
    assert "turn 3" not in r.stdout and len(images) == 4 and r.stdout.count("size") == 2
    # A bad follow-up is one line on stderr, and the conversation goes on.
    assert "say a number from 1 to 2" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_cli_chat_resumes_a_session_after_a_restart(tmp_path):
    home = tmp_path / "home"
    common = ["chat", "--session", "fox", "--n", "2", "--megapixels", "0.02", "--engine", "fixed", "--scorer", "heuristic"]
    assert run_cli(*common, home=home, input="a fox in the rain\nwider\n").returncode == 0
    r = run_cli(*common, home=home, input="more like the first one\n")
    assert r.returncode == 0, r.stderr
    assert "resumed after turn 2 (a fox in the rain)" in r.stdout
    assert "turn 3 (run" in r.stdout and "more like #1" in r.stdout


def _interpreter(url: str, notes: list):
    from reverie.agents.llm import LLMClient, LLMSettings
    from reverie.orchestrator.chat import LLMInterpreter

    llm = LLMClient(LLMSettings(base_url=url, model="scripted-model", timeout=10, retries=1))
    return LLMInterpreter(llm, RuleInterpreter(frozenset({"canny", "img2img"})), notice=notes.append)


def test_an_llm_reads_the_follow_up_when_one_is_configured():
    from tests.openai_server import Reply, ScriptedLLM, json_content

    answer = {"kind": "follow_up", "idea": "a woman in a moonlit garden", "aspect": "16:9", "new_seeds": False,
              "like_image": 2, "keep": "pose"}
    notes = []
    with ScriptedLLM([Reply(json_content(answer))]) as server:
        r = _interpreter(server.url, notes).interpret("like the 2nd but moonlit, cinema-wide, same pose",
                                                      _previous(FIRST), Request(idea="x"), fresh_seed=999)
        sent = server.chat_requests[0]
    assert r.source == "llm" and not notes
    assert r.request.idea == "a woman in a moonlit garden" and r.request.aspect == "16:9"
    assert r.request.seed == 12 and r.ref_render_id == 101
    # Pose weights are absent here, so the pose is kept as edges of the image it pointed at.
    assert r.request.references == (Reference("/h/images/1.png", "canny", 0.8),)
    context = json.loads(sent["messages"][1]["content"])
    assert context["last_turn"] == {"idea": FIRST.idea, "aspect": "1:1", "images_shown": 3}


def test_an_unusable_llm_answer_falls_back_to_the_rules():
    from tests.openai_server import Reply, ScriptedLLM, json_content

    notes = []
    bad = Reply(json_content({"kind": "follow_up", "idea": "x", "like_image": 7}))  # only 3 images were shown
    with ScriptedLLM([bad]) as server:
        r = _interpreter(server.url, notes).interpret("make it night", _previous(FIRST), Request(idea="x"), fresh_seed=999)
    assert r.source == "rules" and r.request.idea == "a woman in a garden, at night"
    assert len(notes) == 1 and "using the offline rules" in notes[0] and "say a number from 1 to 3" in notes[0]
    with ScriptedLLM([Reply(raw=b"not json at all")] * 2) as server:
        r = _interpreter(server.url, notes).interpret("wider", _previous(FIRST), Request(idea="x"), fresh_seed=999)
    assert r.source == "rules" and r.request.aspect == "4:3" and len(notes) == 2


def test_the_llm_reads_follow_ups_only_when_configured(tmp_path, monkeypatch):
    from reverie.orchestrator.chat import LLMInterpreter, make_interpreter

    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with Studio(home=tmp_path / "a", engine="fixed") as studio:
        assert isinstance(make_interpreter(studio, lambda e: None), RuleInterpreter)
    with Studio(home=tmp_path / "b", engine="fixed", llm_url="http://127.0.0.1:9/v1") as studio:
        assert isinstance(make_interpreter(studio, lambda e: None), LLMInterpreter)


def test_a_new_subject_replaces_the_old_one():
    fox = _previous(Request(idea="a fox in the rain, at night"))
    assert read("keep the pose but make it a knight", fox).request.idea == "a knight in the rain, at night"
    assert read("make it an astronaut", _previous(Request(idea="a fox"))).request.idea == "an astronaut"
    assert read("make it blue", fox).request.idea == "a fox in the rain, at night, with a palette dominated by blue"
    # A time of day the idea had is replaced, not contradicted.
    assert read("make it dawn", fox).request.idea == "a fox in the rain, at dawn"


def test_slash_commands_answer_without_rendering(tmp_path):
    from reverie.orchestrator.chat import chat_command, is_command

    assert is_command("/help") and is_command("/show 2") and not is_command("/new a lighthouse")
    with Studio(home=tmp_path / "home", engine="fixed", engine_options={"latency": 0.0}, scorer="heuristic") as studio:
        assert "/undo" in chat_command(studio, "s", "/help").text
        assert chat_command(studio, "s", "/quit").quit
        assert "no turns yet" in chat_command(studio, "s", "/session").text
        with pytest.raises(ReverieError, match="/help lists"):
            chat_command(studio, "s", "/frobnicate")
        studio.chat("s", "a fox in the rain", n=2, rounds=1, megapixels=0.02)
        studio.chat("s", "make it night", n=2, rounds=1, megapixels=0.02)
        shown = chat_command(studio, "s", "/show 2").text
        assert "seed" in shown and ".png" in shown and "prompt: " in shown
        assert "2 turn(s)" in chat_command(studio, "s", "/session").text
        assert "turn 2 forgotten" in chat_command(studio, "s", "/undo").text
        assert [t["turn"] for t in studio.store.chats.turns("s")] == [1]
        renders = studio.store.db.execute("select count(*) from renders").fetchone()[0]
        assert renders == 4  # the commands rendered nothing
        third = studio.chat("s", "wider", n=2, rounds=1, megapixels=0.02)
        assert third.turn == 2 and third.interpretation.request.idea == "a fox in the rain"


def test_ctrl_c_cancels_the_turn_and_keeps_it(tmp_path):
    with Studio(home=tmp_path / "home", engine="fixed", engine_options={"latency": 0.02}, scorer="heuristic") as studio:
        def stop_after_two(event):
            if event.kind == "rendered" and event.data["render_id"] >= 2:
                raise KeyboardInterrupt

        turn = studio.chat("s", "a fox in the rain", n=8, rounds=1, megapixels=0.02, progress=stop_after_two)
        assert turn.cancelled and turn.best and turn.turn == 1
        assert studio.store.get_run(turn.run_id)["status"] == "interrupted"
        assert [t["turn"] for t in studio.store.chats.turns("s")] == [1]
        nxt = studio.chat("s", "make it night", n=2, rounds=1, megapixels=0.02)
        assert nxt.turn == 2 and nxt.parent_run_id == turn.run_id and not nxt.cancelled


def test_cli_chat_help_renders_nothing(tmp_path):
    home = tmp_path / "home"
    r = run_cli("chat", "--session", "s", "--engine", "fixed", "--scorer", "heuristic", home=home,
                input="/help\n/frobnicate\n/show 1\n/quit\n")
    assert r.returncode == 0, r.stderr
    assert "/undo" in r.stdout and "unknown command /frobnicate: /help lists the commands" in r.stderr
    assert "no images yet" in r.stdout and "Traceback" not in r.stderr
    import sqlite3

    with sqlite3.connect(home / "reverie.db") as conn:
        assert conn.execute("select count(*) from renders").fetchone()[0] == 0
        assert conn.execute("select count(*) from runs").fetchone()[0] == 0


def test_cli_chat_turn_shows_its_prompt(tmp_path):
    r = run_cli("chat", "--session", "s", "--n", "2", "--megapixels", "0.02", "--engine", "fixed", "--scorer",
                "heuristic", home=tmp_path / "home", input="a fox in the rain\nkeep the pose but make it a knight\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("  prompt: ") == 2 and "subject: a knight" in r.stdout and "(read by offline rules)" in r.stdout
