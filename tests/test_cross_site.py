"""A web page on another origin must not change anything on a user's local `reverie serve`.

The server runs without a token, as a person runs it on their own machine. One image is made first
through the API (as a client that is not a browser), so that a pick, a reproduce or a follow-up
from the hostile page would have something real to act on and would show up in the store."""

from __future__ import annotations

import http.server
import shutil
import threading
from pathlib import Path

import httpx
import pytest

from tests.serve_helpers import ThreadServer, free_port, wait_until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_models_dir):
    home = tmp_path_factory.mktemp("cross") / "home"
    home.mkdir()
    (home / "models").symlink_to(tiny_models_dir, target_is_directory=True)
    with ThreadServer(home) as server:
        r = httpx.post(server.url + "/v1/images/generations", timeout=300,
                       json={"model": "reverie", "prompt": "a paper kite", "n": 1, "quality": "standard"})
        assert r.status_code == 200, r.text
        yield server


def footprint(server) -> dict:
    """Everything a state-changing route could have added to the store."""
    db = server.studio.store.db
    return {table: db.execute(f"select count(*) from {table}").fetchone()[0]
            for table in ("runs", "renders", "picks", "chat_turns", "serve_requests")}


def first_render(server) -> int:
    return server.studio.store.db.execute("select min(id) from renders").fetchone()[0]


ROUTES = ["/v1/images/generations", "/api/studio/send", "/api/pick", "/api/reproduce/{rid}",
          "/api/requests/1/stop", "/v1/images/edits", "/api/images/{rid}/edit"]
EVIL = "http://evil.example"
ATTACKS = {
    # What a browser sends cross-site without a preflight: a "simple" content type, its own Origin.
    "text/plain smuggling json": {"content-type": "text/plain; x=application/json", "origin": EVIL},
    "json with a foreign origin": {"content-type": "application/json", "origin": EVIL},
    "json from another port of localhost": {"content-type": "application/json", "origin": "http://127.0.0.1:1"},
    "sec-fetch-site cross-site": {"content-type": "application/json", "sec-fetch-site": "cross-site"},
    "sec-fetch-site same-site": {"content-type": "application/json", "sec-fetch-site": "same-site"},
    "null origin (sandboxed frame)": {"content-type": "application/json", "origin": "null"},
    "form post": {"content-type": "application/x-www-form-urlencoded", "origin": EVIL},
    "multipart form": {"content-type": "multipart/form-data; boundary=x", "origin": EVIL,
                       "sec-fetch-site": "cross-site"},
    # Without Origin (an old browser, a stripped header) the media type alone must still refuse.
    "text/plain smuggling json, no origin": {"content-type": "text/plain; x=application/json"},
    "json spelled in a parameter, no origin": {"content-type": "text/plain;charset=application/json"},
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_state_changing_routes_refuse_cross_site_requests(served, attack):
    before = footprint(served)
    rid = first_render(served)
    body = ('{"model": "reverie", "prompt": "owned", "session": "web-evil", "message": "owned", "n": 1, '
            f'"choice": "reject", "render_id": {rid}}}')
    for route in ROUTES:
        r = httpx.post(served.url + route.format(rid=rid), content=body.encode(), headers=ATTACKS[attack], timeout=60)
        assert r.status_code in (403, 415), (route, attack, r.status_code, r.text)
        assert r.json()["error"]["message"]  # the OpenAI error shape, one line that names the way
    assert footprint(served) == before


def test_the_same_origin_page_and_plain_clients_still_work(served):
    rid = first_render(served)
    own = {"origin": served.url, "sec-fetch-site": "same-origin"}
    r = httpx.post(served.url + "/api/pick", json={"choice": "pick", "render_id": rid}, headers=own)
    assert r.status_code == 200, r.text
    # A client that is not a browser (curl, the openai package) sends no Origin at all.
    r = httpx.post(served.url + "/api/pick", json={"choice": "reject", "render_id": rid})
    assert r.status_code == 200, r.text
    # Behind a TLS proxy the Origin's scheme differs but its host is the server's.
    host = served.url.split("://", 1)[1]
    r = httpx.post(served.url + "/api/pick", json={"choice": "pick", "render_id": rid},
                   headers={"origin": f"https://{host}"})
    assert r.status_code == 200, r.text
    assert [row["choice"] for row in served.studio.store.picks.history(rid)][-3:] == ["pick", "reject", "pick"]


EVIL_PAGE = """<!doctype html><title>cat pictures</title>
<iframe name="sink1"></iframe><iframe name="sink2"></iframe><iframe name="sink3"></iframe>
<form id="f1" method="post" enctype="text/plain" target="sink1" action="{base}/api/pick">
  <input name='{{"choice": "reject", "render_id": {rid}, "x": "' value='"}}'></form>
<form id="f2" method="post" target="sink2" action="{base}/api/studio/send">
  <input name="session" value="web-evil"><input name="message" value="owned"></form>
<form id="f3" method="post" enctype="multipart/form-data" target="sink3" action="{base}/v1/images/generations">
  <input name="prompt" value="owned"></form>
<script>
const base = "{base}";
const body = JSON.stringify({{model: "reverie", prompt: "owned", session: "web-evil", message: "owned",
                             n: 1, choice: "reject", render_id: {rid}}});
const routes = ["/v1/images/generations", "/api/studio/send", "/api/pick", "/api/reproduce/{rid}",
                "/api/requests/1/stop", "/v1/images/edits", "/api/images/{rid}/edit"];
const tries = [];
for (const route of routes) {{
  for (const type of ["text/plain; x=application/json", "text/plain", "application/x-www-form-urlencoded"]) {{
    tries.push(fetch(base + route, {{method: "POST", mode: "no-cors", headers: {{"Content-Type": type}}, body}}));
  }}
  tries.push(fetch(base + route, {{method: "POST", mode: "no-cors", body: new Blob([body])}}));
}}
for (const id of ["f1", "f2", "f3"]) document.getElementById(id).submit();
Promise.allSettled(tries).then(() => {{ document.title = "sent " + tries.length; }});
</script>"""


def test_a_page_on_another_origin_changes_nothing_in_a_real_browser(served, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("no chromium binary: apt-get install -y chromium to run the browser test")
    from playwright import sync_api

    rid = first_render(served)
    site = tmp_path / "evil"
    site.mkdir()
    (site / "index.html").write_text(EVIL_PAGE.format(base=served.url, rid=rid))
    seen: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(site), **kw)

        def log_message(self, *a):
            pass

    evil = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    before = footprint(served)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            try:
                page = browser.new_page()
                page.on("request", lambda req: seen.append(req.url) if req.url.startswith(served.url) else None)
                # Another port of the same host: same-site, not same-origin, the closest a page can get.
                page.goto(f"http://127.0.0.1:{evil.server_address[1]}/index.html")
                page.wait_for_function("document.title.startsWith('sent')", timeout=60_000)
                wait_until(lambda: sum("/api/studio/send" in u for u in seen) >= 5, timeout=20,
                           what="the page's fetches and forms to reach the server")
                page.wait_for_timeout(500)  # let the last form posts finish on the server
                shot = tmp_path / "evil.png"
                page.screenshot(path=str(shot))
                assert shot.stat().st_size > 0
            finally:
                browser.close()
    finally:
        evil.shutdown()
    assert len(seen) >= 27  # 24 fetches and 3 forms reached the server: the test did attack
    assert footprint(served) == before


def test_a_bodyless_post_is_judged_by_its_site_not_its_missing_type(served):
    # MCP's session DELETE and A1111's interrupt carry no body: no media type to check.
    r = httpx.post(served.url + "/api/requests/999999/stop")
    assert r.status_code == 404, r.text
    # From another site the same bodyless request is still refused.
    r = httpx.post(served.url + "/api/requests/999999/stop", headers={"origin": EVIL})
    assert r.status_code == 403, r.text


def test_with_a_token_basic_auth_carries_it_and_api_paths_answer_401(tmp_path, tiny_models_dir):
    import base64

    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(tiny_models_dir, target_is_directory=True)
    with ThreadServer(home, token="s3cret") as server:
        for path in ("/sdapi/v1/sd-models", "/v1/models"):
            assert httpx.get(server.url + path).status_code == 401
            basic = base64.b64encode(b"anyone:s3cret").decode()
            assert httpx.get(server.url + path, headers={"authorization": f"Basic {basic}"}).status_code == 200
            wrong = base64.b64encode(b"anyone:nope").decode()
            assert httpx.get(server.url + path, headers={"authorization": f"Basic {wrong}"}).status_code == 401
        assert httpx.post(server.url + "/mcp", json={}).status_code == 401
