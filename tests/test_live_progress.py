"""Live progress: the engine's step events, a cheap latent preview every few steps in the web studio
(over SSE), none on the CLI, and the queue panel's view of a running request."""

from __future__ import annotations

import base64
import io
import json

import httpx
from PIL import Image

from reverie.orchestrator.studio import Studio
from tests.serve_helpers import ThreadServer, wait_until


def decode(data_url: str) -> Image.Image:
    assert data_url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1])))


def test_sse_shows_steps_and_a_preview_before_the_first_image(home):
    with ThreadServer(home) as server:
        sent = httpx.post(server.url + "/api/studio/send", json={"session": "web-live-1", "message": "a fox in the rain",
                                                                 "n": 2, "steps": 5}, timeout=60).json()
        with httpx.stream("GET", server.url + sent["events"], timeout=300) as r:
            events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
        kept = server.service.job(sent["request_id"]).events
    # Only the newest preview stays in memory, for a client that comes back.
    assert len([e for e in kept if e["kind"] == "step" and e.get("preview")]) == 1
    kinds = [e["kind"] for e in events]
    first_image = kinds.index("rendered")
    before = events[:first_image]
    steps = [e for e in before if e["kind"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3, 4, 5] and all(e["steps"] == 5 for e in steps)
    previews = [e["preview"] for e in events if e["kind"] == "step" and e.get("preview")]
    assert previews
    with decode(previews[0]) as im:
        assert im.format == "PNG" and max(im.size) == 96
    assert kinds[-1] == "done"


def test_the_cli_studio_counts_steps_without_making_previews(home):
    seen = []
    with Studio(home=home, engine="tiny", scorer="heuristic") as studio:
        studio.make("a fox", n=1, rounds=1, megapixels=0.05, steps=4, progress=seen.append)
    steps = [e.data for e in seen if e.kind == "step"]
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    assert all(s["preview"] is None for s in steps)


def test_previews_come_every_few_steps_when_asked(home):
    seen = []
    with Studio(home=home, engine="tiny", scorer="heuristic") as studio:
        studio.previews = True
        studio.make("a fox", n=1, rounds=1, megapixels=0.05, steps=5, progress=seen.append)
    with_preview = [e.data["step"] for e in seen if e.kind == "step" and e.data["preview"]]
    assert with_preview == [2, 4]  # the last step's preview would only race the finished image


def test_the_queue_panel_lists_a_running_request_with_its_state_and_cancels_it(home):
    with ThreadServer(home) as server:
        sent = httpx.post(server.url + "/api/studio/send", json={"session": "web-live-2", "message": "an owl",
                                                                 "n": 8, "steps": 30}, timeout=60).json()
        listed = wait_until(lambda: [r for r in httpx.get(server.url + "/api/queue").json()["requests"]
                                     if r["id"] == sent["request_id"] and "rendering" in r["state"]],
                            what="the request rendering in the queue panel")
        assert listed[0]["what"] == "an owl" and "step" in listed[0]["state"]
        assert httpx.post(f"{server.url}/api/requests/{sent['request_id']}/stop", json={}).status_code == 200
        with httpx.stream("GET", server.url + sent["events"], timeout=300) as r:
            last = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")][-1]
        assert last["kind"] == "cancelled"
        wait_until(lambda: not httpx.get(server.url + "/api/queue").json()["requests"], what="an empty queue")
