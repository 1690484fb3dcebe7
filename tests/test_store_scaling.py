"""A round's store work does not grow with the run: the store answers by id and returns a run's
renders with their scores in one query, and the loop's nodes read only the round they are in."""

from __future__ import annotations

from reverie import Studio
from reverie.types import Event

ROUNDS = 8  # with one seed a round, fewer scores than early stopping needs: every round runs


def test_statements_per_round_stay_the_same_from_the_second_round_to_the_last(tmp_path):
    per_round: list[int] = []
    statements: list[str] = []

    def progress(event: Event) -> None:
        if event.kind == "round_started":  # every round renders (not all expand); the node thread runs it all
            per_round.append(len(statements))

    with Studio(home=tmp_path, engine="fixed", scorer="heuristic", engine_options={"latency": 0.0}) as studio:
        studio.store.db.conn.set_trace_callback(statements.append)
        result = studio.make("a fox in the rain", n=1, rounds=ROUNDS, megapixels=0.01, seed=3, progress=progress)
        studio.store.db.conn.set_trace_callback(None)
    assert len(result.renders) == ROUNDS and len(per_round) == ROUNDS
    counts = [b - a for a, b in zip(per_round, per_round[1:])]
    # Round 1 opens what the run needs once; from round 2 on, a round is the same work however long
    # the run (a round that expands a new prompt writes it: a few statements more, never more per render).
    assert max(counts[1:]) - min(counts[1:]) <= 4 and counts[-1] <= counts[1] + 4, counts


def test_renders_come_with_their_scores_and_by_id(tmp_path):
    with Studio(home=tmp_path, engine="fixed", scorer="heuristic", engine_options={"latency": 0.0}) as studio:
        run_id = studio.make("a lighthouse", n=3, rounds=1, megapixels=0.01, seed=5).run_id
        store = studio.store
        renders = store.renders(run_id)
        assert len(renders) == 3
        for r in renders:
            assert r.scores == store.scores_for(r.id)
            assert store.render_by_id(r.id).scores == r.scores
        ids = [r.id for r in renders]
        assert [r.id for r in store.renders_by_ids(reversed(ids + [10**9]))] == ids  # id order, unknown left out
        ranked = sorted(renders, key=lambda r: (-r.scores.composite, r.id))
        assert [r.id for r in store.best(run_id, k=2)] == [r.id for r in ranked[:2]]
        assert store.composites(run_id) == [r.scores.composite for r in renders]
        prompt = store.round_prompt(run_id, 0)
        assert prompt is not None and store.prompt(prompt["id"])["text"] == renders[0].spec.prompt
        assert store.round_prompt(run_id, 1) is None
        tree = store.run_tree(run_id)
        shown = [r["scores"]["composite"] for p in tree["prompts"] for r in p["renders"]]
        assert shown == [r.scores.composite for r in renders]
