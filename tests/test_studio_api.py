"""The Python API documents itself: `help(Studio.make)` lists every option, each explained."""

from __future__ import annotations

import dataclasses
import inspect
import pydoc
import re

import pytest

from reverie.orchestrator.studio import Studio
from reverie.types import Request


def documented(doc: str) -> set[str]:
    """Names an Args section explains: "name:" or "a, b, c:" at the start of a line."""
    names: set[str] = set()
    for line in doc.splitlines():
        m = re.match(r"\s*([a-z_]+(?:, [a-z_]+)*):\s", line)
        if m:
            names.update(m.group(1).split(", "))
    return names


@pytest.mark.parametrize("method", ["make", "stream", "chat", "open_run", "batch", "edit"])
def test_every_option_of_the_public_methods_is_named_and_explained(method):
    fn = getattr(Studio, method)
    params = [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]
    assert not [p for p in params if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL)], f"{method} takes **kw"
    text = pydoc.render_doc(fn, renderer=pydoc.plaintext)
    doc = inspect.getdoc(fn) or ""
    # A method whose docstring says its options are make's may leave their explanation there.
    explained = documented(doc) | (documented(inspect.getdoc(Studio.make)) if "options are `make`'s" in doc else set())
    missing = {p.name for p in params} - explained
    assert not missing, f"help(Studio.{method}) does not explain {sorted(missing)}"
    for p in params:
        assert p.name in text


def test_make_takes_every_field_of_a_request():
    fields = {f.name for f in dataclasses.fields(Request)} - {"idea", "source"}  # an edit's source: Studio.edit takes it
    assert fields <= set(inspect.signature(Studio.make).parameters)


def test_progress_comes_as_typed_events_that_still_read_as_kind_and_data(tmp_path):
    from reverie.types import (EVENT_TYPES, Expanded, Finished, Judged, Rendered, Result, RoundStarted, RunStarted,
                               Scored, TypedEvent)

    assert len({t.KIND for t in EVENT_TYPES}) == len(EVENT_TYPES) and all(t.KIND for t in EVENT_TYPES)
    with Studio(home=tmp_path / "home", engine="fixed", engine_options={"latency": 0.0}, scorer="heuristic") as studio:
        events = list(studio.stream("a fox in the rain", n=2, rounds=2, megapixels=0.02, seed=3))
    assert [e for e in events if not isinstance(e, TypedEvent)] == []
    assert {RunStarted, Expanded, RoundStarted, Rendered, Scored, Judged, Finished, Result} <= {type(e) for e in events}
    started = next(e for e in events if isinstance(e, RunStarted))
    assert started.kind == "run_started" and started.data["run_id"] == started.run_id and started.data["budget"] == 4
    final = next(e for e in events if isinstance(e, Judged) and e.decision == "finish")
    assert set(final.data) == {"round", "best", "decision", "reason"}  # what the CLI's bar reads, nothing more
