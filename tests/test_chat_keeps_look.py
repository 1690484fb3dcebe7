"""A chat follow-up revises the last prompt instead of re-reading the idea: the look stays."""

from __future__ import annotations

from reverie.agents.formula import LIGHTING, MEDIUMS
from reverie.agents.reword import revise_prompt, reword
from reverie.orchestrator.studio import Studio


def medium_of(prompt: str) -> str:
    [medium] = [text for _, text in MEDIUMS if text[0].upper() + text[1:] in prompt]
    return medium


def test_make_it_night_keeps_the_medium_of_turn_one_and_a_new_idea_starts_afresh(tmp_path):
    # An engine without an editor: where one is present, "make it night" is an edit of the image instead.
    with Studio(home=tmp_path / "home", engine="fixed", engine_options={"latency": 0.0}, scorer="heuristic") as studio:
        turns = [studio.chat("look-1", message, n=1, rounds=1, megapixels=0.02)
                 for message in ("a lantern festival by the river", "make it night", "make it a lighthouse",
                                 "new idea: an owl at dawn")]
        prompts = [studio.store.prompts(t.run_id)[-1] for t in turns]
    medium = medium_of(prompts[0]["text"])
    assert medium_of(prompts[1]["text"]) == medium and medium_of(prompts[2]["text"]) == medium
    assert "night" in prompts[1]["text"] and prompts[1]["source"] == "critic"
    assert prompts[2]["text"].startswith("A lighthouse")
    # Between the idea and the lighting the words are the same: style, composition and setting stay.
    assert prompts[1]["text"].split(". ")[1:4] == prompts[0]["text"].split(". ")[1:4]
    assert prompts[3]["source"] == "formula" and prompts[3]["text"].startswith("An owl at dawn")


def test_a_lighting_line_the_new_idea_contradicts_is_swapped():
    golden = LIGHTING[0][0]
    prompt = f"A fox in a meadow. A delicate watercolor illustration on textured paper. {golden.capitalize()}, with soft pastel tones."
    revised = revise_prompt(prompt, "a fox in a meadow", "a fox in a meadow, at night")
    assert revised.startswith("A fox in a meadow, at night. A delicate watercolor illustration")
    assert golden.capitalize() not in revised and "soft pastel tones" in revised
    assert revise_prompt("an LLM's own words about foxes", "a fox", "an owl") is None


def test_make_it_night_rewords_the_prompt_instead_of_appending_the_message(tmp_path):
    # The done-when: turn 1 names a medium; turn 2 keeps it, and says night in the prompt's words.
    with Studio(home=tmp_path / "home", engine="fixed", engine_options={"latency": 0.0}, scorer="heuristic") as studio:
        turns = [studio.chat("look-2", message, n=1, rounds=1, megapixels=0.02)
                 for message in ("a fox in a meadow", "make it night", "make it day")]
        prompts = [studio.store.prompts(t.run_id)[-1]["text"] for t in turns]
    medium = medium_of(prompts[0])
    assert medium_of(prompts[1]) == medium and medium_of(prompts[2]) == medium
    assert "make it night" not in prompts[1].lower() and "at night" in prompts[1]
    # Day replaces night rather than sitting beside it.
    assert "at night" not in prompts[2] and "in broad daylight" in prompts[2] and "moonlight" not in prompts[2].lower()


def test_rewording_swaps_what_conflicts_and_keeps_the_rest():
    llm_words = ("Digital concept art of a lantern festival on a river at dusk, warm sunset glow on the water, "
                 "a vibrant orange and teal palette. Cinematic, highly detailed.")
    night = reword(llm_words, "make it night")
    assert night == ("Digital concept art of a lantern festival on a river at night, warm moonlit glow on the water, "
                     "a vibrant orange and teal palette. Cinematic, highly detailed.")
    blue = reword(llm_words, "make it blue")
    assert "a palette dominated by blue. Cinematic" in blue and "teal" not in blue and "at dusk" in blue
    # Nothing to swap: a descriptive clause on the first sentence, never the message itself.
    assert reword("A fox. An oil painting.", "make it snowy") == "A fox, in falling snow. An oil painting."
    assert reword("A fox. An oil painting.", "add a red umbrella") == "A fox, with a red umbrella. An oil painting."
    assert reword("A fox. An oil painting.", "more contrast") == "A fox, with more contrast. An oil painting."
    # A season named in passing is not one: only a season clause is swapped.
    assert reword("A spring in the woods in autumn.", "winter") == "A spring in the woods in winter."
