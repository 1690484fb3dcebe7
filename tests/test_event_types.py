"""Every typed progress event survives serve's SSE line and comes back as itself on the client."""

import dataclasses
import json
import typing

import pytest

from reverie.serve.pages import sse
from reverie.types import EVENT_TYPES, Event, Notice, Queued, Rendered, TypedEvent, event_from

SAMPLES = {str: "a fox", int: 3, float: 0.25, bool: True, list: [{"index": 0, "idea": "a fox"}], typing.Any: {"run_id": "r1"}}


def sample(hint):
    if typing.get_origin(hint) is typing.Union:  # Optional[X]: an X, so the optional key is sent
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is list:
        return [sample(typing.get_args(hint)[0])]
    return SAMPLES[hint]


def full(cls: type[TypedEvent]) -> TypedEvent:
    hints = typing.get_type_hints(cls)
    return cls(**{f.name: sample(hints[f.name]) for f in dataclasses.fields(cls) if f.init})


def over_the_wire(event: Event) -> Event:
    """As serve sends it (Job.emit's dict, pages.sse's line) and as the CLI reads it (remote.follow)."""
    line = sse({"kind": event.kind, **event.data}).strip()
    assert line.startswith("data: ")
    data = json.loads(line[len("data: "):])
    return event_from(data.pop("kind"), data)


def all_subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from all_subclasses(sub)


def test_every_typed_event_is_listed_with_its_own_kind():
    assert set(all_subclasses(TypedEvent)) == set(EVENT_TYPES)
    assert len({t.KIND for t in EVENT_TYPES}) == len(EVENT_TYPES) and all(t.KIND for t in EVENT_TYPES)


@pytest.mark.parametrize("cls", EVENT_TYPES, ids=lambda cls: cls.KIND)
def test_a_typed_event_round_trips_through_the_sse_line(cls):
    event = full(cls)
    back = over_the_wire(event)
    assert type(back) is cls and back == event and back.data == event.data and back.kind == cls.KIND
    assert "kind" not in event.data  # the line's own key: a field of that name would overwrite the kind


def test_optional_fields_left_out_stay_out_and_come_back_as_none():
    event = Notice(message="ComfyUI at http://127.0.0.1:8188 is gone")
    assert event.data == {"message": event.message}
    assert over_the_wire(event) == event and over_the_wire(Notice(message="m", index=2)).index == 2


def test_kinds_and_keys_the_client_does_not_know_stay_plain_events_with_all_their_data():
    queued = Queued(server="http://127.0.0.1:8188", ahead=2, seed=7, message="waiting")
    assert queued.data == {"server": "http://127.0.0.1:8188", "ahead": 2, "seed": 7, "message": "waiting"}
    plugin = event_from("my_plugin_step", {"x": 1})
    assert type(plugin) is Event and plugin.kind == "my_plugin_step" and plugin.data == {"x": 1}
    # serve adds the image's card to a rendered event: the client keeps it rather than drop it
    rendered = {**full(Rendered).data, "image": {"id": 3}}
    carded = event_from("rendered", rendered)
    assert type(carded) is Event and carded.data == rendered
    missing = event_from("queued", {"server": "s", "ahead": 1})
    assert type(missing) is Event and missing.data == {"server": "s", "ahead": 1}
