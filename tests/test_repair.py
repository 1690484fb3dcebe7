"""Repair in the loop: the EDIT decision, and a round that edits the best candidate."""

from __future__ import annotations

from reverie.agents.critic import Critique
from reverie.orchestrator import policy
from reverie.orchestrator.studio import Studio


def test_edit_is_chosen_only_with_an_editor_an_instruction_and_a_close_candidate():
    assert policy.should_edit(can_edit=True, instruction="make the coat red", best=0.62, target=0.7)
    assert policy.should_edit(can_edit=True, instruction="make the coat red", best=0.2, target=None)
    assert not policy.should_edit(can_edit=False, instruction="make the coat red", best=0.69, target=0.7)
    assert not policy.should_edit(can_edit=True, instruction="  ", best=0.69, target=0.7)
    assert not policy.should_edit(can_edit=True, instruction="make the coat red", best=0.5, target=0.7)  # far: re-roll
    assert policy.next_step("revise", "edit", False, edit=True) == policy.EDIT
    assert policy.next_step("revise", "edit", False, edit=False) == policy.RENDER  # no editor: more seeds
    assert policy.next_step("explore", "edit", False, edit=False) == policy.EXPLORE
    assert policy.next_step("revise", "variety", False, editing=True) == policy.RENDER  # knobs do not steer edits
    assert policy.next_step("revise", "variety", False) == policy.VARIETY


class ScriptedCritic:
    """Asks once for a fix by edit, then for more seeds; records what the loop offered it."""

    name = "scripted"

    def __init__(self):
        self.offered = []

    def critique(self, idea, expansion, profile, round_best, previous_best, similarity, details, feedback="",
                 can_edit=False):
        self.offered.append(can_edit)
        if len(self.offered) == 1:
            return Critique("edit", "the sky is too bright", edit="make the sky darker")
        return Critique("more_seeds", "still improving")


def test_round_two_edits_round_ones_best_under_the_same_budget(home):
    critic = ScriptedCritic()
    with Studio(home=home, engine="tiny", critic=critic) as studio:
        result = studio.make("a red kite", n=2, rounds=3, max_renders=5, seed=11)
        renders = studio.store.renders(result.run_id)
        rows = {r["id"]: r for r in studio.store.render_rows(result.run_id)}
        prompts = studio.store.prompts(result.run_id)
    assert critic.offered == [True, True]  # the tiny Z-Image engine edits by img2img
    by_round = {k: [r for r in renders if r.round == k] for k in range(3)}
    assert [len(by_round[k]) for k in range(3)] == [2, 2, 1]  # the render budget, exact
    assert result.stop_reason == "render budget reached (5)"
    first_best = max(by_round[0], key=lambda r: (r.scores.composite, -r.id))
    for r in by_round[1] + by_round[2]:  # the repair round, then more seeds of the same edit
        assert r.spec.source.render_id == first_best.id and r.spec.source.image_sha == first_best.sha256
        assert r.spec.source.instruction == "make the sky darker"
        assert rows[r.id]["source_render_id"] == first_best.id and rows[r.id]["instruction"] == "make the sky darker"
    assert all(r.spec.source is None for r in by_round[0])
    edit_prompt = next(p for p in prompts if p["id"] == by_round[1][0].prompt_id)
    assert edit_prompt["source"] == "critic" and edit_prompt["parent_id"] == by_round[0][0].prompt_id
    assert edit_prompt["text"].endswith("make the sky darker") and f"edit of render {first_best.id}" in edit_prompt["reason"]
    assert len({r.seed for r in renders}) == 5  # new seeds each round, never a seed twice


KITE = ("A red kite with a long ribbon tail climbs over a windy green hill under a pale afternoon sky, its "
        "fabric taut and bright against scattered clouds, a child's string trailing down to the grass below.")


def test_the_llm_critic_states_the_flaw_as_an_edit_and_round_two_edits_round_ones_best(home):
    """The LLM critic over real HTTP (tests/openai_server.py) answers "edit" with an instruction; the
    loop's next round edits round 1's best candidate with it."""
    from reverie.agents.critic import CRITIC_EDIT, CRITIC_SYSTEM
    from tests.openai_server import Reply, ScriptedLLM, json_content

    asked = []

    def respond(body):
        system = body["messages"][0]["content"]
        if not system.startswith(CRITIC_SYSTEM.split("{")[0][:60]):  # the dreamer expands
            return Reply(json_content({"expansions": [{"interpretation": "a kite", "prompt": KITE, "negative": ""}]}))
        asked.append(CRITIC_EDIT in system)
        if len(asked) == 1:
            return Reply(json_content({"action": "edit", "reason": "the sky is washed out",
                                       "edit": "make  the sky   a deep blue"}))
        return Reply(json_content({"action": "more_seeds", "reason": "the edit helps"}))

    with ScriptedLLM(responder=respond) as llm, Studio(home=home, engine="tiny", llm_url=llm.url) as studio:
        result = studio.make("a red kite", n=2, rounds=3, max_renders=5, seed=11)
        renders = studio.store.renders(result.run_id)
        calls = studio.store.llm_calls(result.run_id)
    assert asked == [True, True]  # the tiny Z-Image engine can edit (img2img): "edit" was offered each time
    assert [c["purpose"] for c in calls].count("critique") == 2 and all(c["ok"] for c in calls)
    by_round = {k: [r for r in renders if r.round == k] for k in range(3)}
    assert [len(by_round[k]) for k in range(3)] == [2, 2, 1] and result.stop_reason == "render budget reached (5)"
    first_best = max(by_round[0], key=lambda r: (r.scores.composite, -r.id))
    assert all(r.spec.source is None for r in by_round[0])
    for r in by_round[1] + by_round[2]:
        assert r.spec.source.render_id == first_best.id and r.spec.source.image_sha == first_best.sha256
        assert r.spec.source.instruction == "make the sky a deep blue"  # the answer's words, whitespace folded
