"""The web studio's image page: its Edit form starts an edit run of that image over real HTTP, the
run's events follow as a turn's do, and the results land with their parent shown."""

from __future__ import annotations

import json

import httpx

from tests.serve_helpers import ThreadServer

SAME_ORIGIN = {"sec-fetch-site": "same-origin"}


def events_until_the_end(url: str) -> list[dict]:
    events = []
    with httpx.stream("GET", url, timeout=300) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if events[-1]["kind"] in ("done", "failed", "cancelled"):
                    break
    return events


def test_the_image_page_edits_its_image_and_lands_the_results_with_their_parent(home):
    with ThreadServer(home) as server:
        made = server.studio.make("a red kite", n=1, rounds=1, seed=4, megapixels=0.01)
        parent = made.best[0].id
        page = httpx.get(f"{server.url}/image/{parent}").text
        assert 'id="edit-form"' in page and f'data-render="{parent}"' in page

        r = httpx.post(f"{server.url}/api/images/{parent}/edit", json={"instruction": "make it night", "n": 2},
                       headers={**SAME_ORIGIN, "origin": server.url}, timeout=60)
        assert r.status_code == 200, r.text
        started = r.json()
        assert started["source"] == parent and started["events"] == f"/events/{started['request_id']}"
        events = events_until_the_end(server.url + started["events"])
        kinds = [e["kind"] for e in events]
        assert kinds[-1] == "done", events[-1]
        assert "round_started" in kinds and "rendered" in kinds  # progress, as a turn shows it
        best = events[-1]["best"]
        assert len(best) == 2
        for card in best:
            assert card["parent"] == {"id": parent, "page": f"/image/{parent}", "sha256": made.best[0].sha256,
                                      "instruction": "make it night"}
        child = httpx.get(f"{server.url}{best[0]['page']}").text
        assert f'edit of <a href="/image/{parent}">image {parent}</a>: “make it night”' in child
        # A finished request says where its run is, as every request does.
        status = httpx.get(f"{server.url}/api/requests/{started['request_id']}").json()
        assert status["status"] == "done" and status["run_id"] == events[-1]["run_id"]
        rows = server.studio.store.renders(status["run_id"])
        assert {(r.spec.source.render_id, r.spec.source.instruction) for r in rows} == {(parent, "make it night")}

        # Bad input: one line each, nothing started.
        before = len(server.service.jobs)
        for body, status_code, words in (({"instruction": "  ", "n": 1}, 400, "no words"),
                                         ({"instruction": "make it night", "n": 0}, 400, "n is"),
                                         ({"instruction": "make it night", "n": 99}, 400, "n is")):
            r = httpx.post(f"{server.url}/api/images/{parent}/edit", json=body, timeout=60)
            assert r.status_code == status_code and words in r.json()["error"]["message"], r.text
        r = httpx.post(f"{server.url}/api/images/999999/edit", json={"instruction": "make it night"}, timeout=60)
        assert r.status_code == 404
        # The same-origin guard: another site's page cannot start an edit.
        r = httpx.post(f"{server.url}/api/images/{parent}/edit", json={"instruction": "make it night"},
                       headers={"origin": "http://evil.example"}, timeout=60)
        assert r.status_code == 403
        assert len(server.service.jobs) == before
