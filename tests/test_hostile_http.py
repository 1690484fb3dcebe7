"""Hostile HTTP input against a real server: ids past SQLite's integers and JSON nested past the
parser's recursion are each refused with a 4xx and OpenAI's error shape, never a 500."""

from __future__ import annotations

import httpx
import pytest

from tests.serve_helpers import ThreadServer

# Ten ids no SQLite integer holds (2^63 and up) or that are not ids at all.
HUGE = [2**63, 2**63 + 1, 2**64, 2**64 - 1, 10**20, 10**30, 2**100, 9 * 10**18 + 10**18, 10**400, -(2**63) - 1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_models_dir):
    home = tmp_path_factory.mktemp("hostile-http") / "home"
    home.mkdir()
    (home / "models").symlink_to(tiny_models_dir, target_is_directory=True)
    with ThreadServer(home) as s:
        yield s


def _refused(response: httpx.Response) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert response.json()["error"]["message"]


@pytest.mark.parametrize("route", ["GET /image/{n}", "GET /api/requests/{n}", "GET /events/{n}",
                                   "POST /api/reproduce/{n}", "POST /api/requests/{n}/stop"])
def test_ids_past_sqlite_s_integers_in_a_path_are_4xx(server, route):
    method, path = route.split()
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for n in HUGE:
            _refused(http.request(method, path.format(n=n), json={}))


def test_a_huge_render_id_to_pick_is_4xx(server):
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for n in HUGE:
            _refused(http.post("/api/pick", json={"render_id": n, "choice": "pick"}))
            _refused(http.post("/api/pick", content=f'{{"render_id": {n}, "choice": "reject"}}',
                               headers={"Content-Type": "application/json"}))


# Ten deep JSON texts: each past the parser's recursion, in arrays, objects, and mixed.
DEEP = [b"[" * 30000 + b"]" * 30000, b"[" * 30000, b'{"a":' * 30000 + b"1" + b"}" * 30000,
        b'{"prompt": ' + b"[" * 20000 + b"]" * 20000 + b"}", b"[{" * 15000, b'{"x":[' * 10000 + b"]}" * 10000,
        b"[" * 60000, b'{"prompt": "a fox", "n": ' + b"[" * 30000 + b"}", b"[" * 100000 + b'"]"',
        b" " * 1000 + b"[" * 30000 + b"]" * 30000]


@pytest.mark.parametrize("path", ["/v1/images/generations", "/api/studio/send", "/api/pick"])
def test_json_nested_past_the_parser_s_recursion_is_4xx(server, path):
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for body in DEEP:
            _refused(http.post(path, content=body[:64 * 1024], headers={"Content-Type": "application/json"}))


def test_brackets_inside_strings_are_not_nesting(server):
    """The depth limit counts structure, not text: an idea full of brackets is still a request."""
    with httpx.Client(base_url=server.url, timeout=30) as http:
        answer = http.post("/api/pick", json={"render_id": 2**62, "choice": "pick", "note": "[[[{{{" * 500})
    assert answer.status_code == 404, answer.text  # read and understood: there is no such image
