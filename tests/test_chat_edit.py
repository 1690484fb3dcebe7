"""Chat edits what the person saw; a new subject still renders from text; each turn says which."""

from __future__ import annotations

from reverie.orchestrator.chat_edit import as_instruction, choose, pointed_rank
from reverie.orchestrator.studio import Studio


def test_pointers_and_instructions():
    assert pointed_rank("make it night") == 1 and pointed_rank("make the second one night") == 2
    assert pointed_rank("give the last image a moon") == -1 and pointed_rank("#3 but bluer") == 3
    assert as_instruction("make the second one night.") == "make it night"
    assert choose("make it night", ("idea + 'at night'",), [], True)[0] is None  # nothing shown yet
    edit, why = choose("make it night", ("idea + 'at night'",), ["best", "second"], False)
    assert edit is None and "no image editor" in why
    edit, why = choose("make her a knight", ("subject: a knight",), ["best"], True)
    assert edit is None and "new picture" in why


def test_make_it_night_edits_turn_ones_best_and_a_new_subject_renders_again(home):
    with Studio(home=home, engine="tiny", scorer="heuristic") as studio:
        first = studio.chat("kite", "a red kite", n=2, rounds=1, megapixels=0.02)
        second = studio.chat("kite", "make it night", n=2, rounds=1, megapixels=0.02)
        third = studio.chat("kite", "make the second one stormy", n=1, rounds=1, megapixels=0.02)
        fourth = studio.chat("kite", "make it a dragon", n=1, rounds=1, megapixels=0.02)
        runs = {t.turn: studio.store.renders(t.run_id) for t in (first, second, third, fourth)}
        turns = studio.store.chats.turns("kite")
    best = first.best[0]
    assert len(runs[2]) == 2
    for r in runs[2]:  # every render of turn 2 is an edit of turn 1's best: no text-only render
        assert r.spec.source is not None and r.spec.source.render_id == best.id
        assert r.spec.source.instruction == "make it night"
    assert "edited the best image of the last turn" in second.interpretation.summary
    assert turns[1]["ref_render_id"] == best.id
    # "the second one" is the second image turn 2 showed, and the editor is told "it".
    assert [r.spec.source.render_id for r in runs[3]] == [second.best[1].id]
    assert runs[3][0].spec.source.instruction == "make it stormy"
    # A new subject is a new picture: rendered from text, and the turn says why.
    assert all(r.spec.source is None for r in runs[4])
    assert "rendered from text: subject: a dragon asks for a new picture" in fourth.interpretation.summary
