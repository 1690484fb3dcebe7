"""`reverie serve` over real HTTP: the real `openai` client against uvicorn, the tiny engine behind it."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading

import httpx
import openai
import pytest
from PIL import Image

from reverie.store.serve_requests import ServeRequests
from tests.conftest import run_cli
from tests.serve_helpers import ThreadServer, raw_generation, wait_until

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def server(home):
    with ThreadServer(home) as s:
        yield s


def client(server, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=kw.pop("api_key", "unused"), max_retries=0, timeout=300,
                         **kw)


def test_the_openai_client_gets_n_pngs_with_revised_prompts(server):
    c = client(server)
    assert {"reverie", "z-image-turbo"} <= {m.id for m in c.models.list()}

    result = c.images.generate(model="reverie", prompt="a fox in the rain", n=2, size="320x200")
    assert len(result.data) == 2
    for item in result.data:
        raw = base64.b64decode(item.b64_json)
        assert raw.startswith(PNG)
        with Image.open(io.BytesIO(raw)) as im:
            im.load()
            # Snapped to the profile's multiple (16) and the tiny engine's 256 cap, the shape kept.
            assert im.size == (256, 160)
        assert "fox in the rain" in item.revised_prompt.lower()
        assert len(item.revised_prompt) > len("a fox in the rain")  # the expanded prompt, not the idea
    assert len({base64.b64decode(i.b64_json) for i in result.data}) == 2

    # url: served by content hash, the same bytes as the stored file
    by_url = c.images.generate(prompt="a lighthouse at dusk", n=1, response_format="url", size="256x256")
    url = by_url.data[0].url
    assert "/files/" in url
    body = httpx.get(url).content
    assert body.startswith(PNG) and url.endswith(hashlib.sha256(body).hexdigest() + ".png")
    row = ServeRequests(server.studio.store).render_by_sha(hashlib.sha256(body).hexdigest())
    assert row is not None and row["status"] == "ok"


def test_eight_concurrent_requests_all_finish_on_one_engine(server):
    c = client(server)
    results, errors = {}, []

    def ask(i):
        try:
            results[i] = c.images.generate(prompt=f"a paper boat number {i}", n=1, size="128x128")
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not errors, errors
    assert sorted(results) == list(range(8))
    for i, r in results.items():
        assert len(r.data) == 1 and f"boat number {i}" in r.data[0].revised_prompt
    # One engine built and loaded for all eight; every request is a run that finished.
    engines = server.studio.parts.engines()
    assert len(engines) == 1 and engines[0].pipe is not None
    runs = server.studio.store.list_runs(limit=50)
    assert len(runs) == 8 and all(r["status"] == "done" for r in runs)
    rows = [ServeRequests(server.studio.store).get(i) for i in range(1, 9)]
    assert all(r["status"] == "done" for r in rows)
    assert len({r["run_id"] for r in rows}) == 8


def test_errors_have_openai_s_shape_and_say_the_fix(server):
    c = client(server)
    cases = [
        (dict(prompt="a fox", n=11), "n"),
        (dict(prompt="a fox", size="huge"), "WIDTHxHEIGHT"),
        (dict(prompt="a fox", quality="ultra"), "quality"),
        (dict(prompt="   "), "idea is empty"),
        (dict(prompt="a fox", size="4000x100"), "aspect"),
    ]
    for kwargs, words in cases:
        with pytest.raises(openai.BadRequestError) as e:
            c.images.generate(**kwargs)
        assert words in e.value.message, (kwargs, e.value.message)
        assert e.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.NotFoundError) as e:  # as OpenAI answers a model it does not have
        c.images.generate(prompt="a fox", model="dall-e-9")
    assert e.value.body["code"] == "model_not_found" and "GET /v1/models" in e.value.message
    raw = httpx.post(server.url + "/v1/images/generations", content=b"{not json", headers={"content-type": "application/json"})
    assert raw.status_code == 400 and "JSON" in raw.json()["error"]["message"]
    big = httpx.post(server.url + "/v1/images/generations", json={"prompt": "x" * 70_000})
    assert big.status_code == 413 and "KiB" in big.json()["error"]["message"]
    # Nothing bad was accepted as a request.
    assert ServeRequests(server.studio.store).open_requests() == []
    assert server.studio.store.list_runs() == []


def test_without_a_token_only_loopback_host_names_are_served(server):
    # A page whose DNS name was rebound to 127.0.0.1 sends its own Host: refused.
    r = httpx.get(server.url + "/v1/models", headers={"Host": "evil.example:8000"})
    assert r.status_code == 403 and "127.0.0.1" in r.json()["error"]["message"]
    assert httpx.get(server.url.replace("127.0.0.1", "localhost") + "/v1/models").status_code == 200


def test_files_only_by_content_hash_from_the_home(server, home):
    for name in ("../reverie.db", "..%2Freverie.db", "reverie.db", "0" * 64 + ".png", "%2Fetc%2Fpasswd"):
        r = httpx.get(server.url + "/files/" + name)
        assert r.status_code == 404, name
    # A PNG dropped into the images folder is not a render of the store: not served either.
    stray = home / "images" / "stray"
    stray.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(stray / "x.png")
    sha = hashlib.sha256((stray / "x.png").read_bytes()).hexdigest()
    assert httpx.get(f"{server.url}/files/{sha}.png").status_code == 404


def _send(server, session, message, n=2, quality="standard"):
    r = httpx.post(server.url + "/api/studio/send", json={"session": session, "message": message, "n": n,
                                                           "quality": quality})
    assert r.status_code == 200, r.text
    return r.json()


def _events(server, path):
    with httpx.stream("GET", server.url + path, timeout=300) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        return [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]


def test_web_turns_stream_images_follow_ups_pick_and_escape(server):
    session = "web-test-1"
    first = _send(server, session, "a fox <script>alert(1)</script> in the rain")
    events = _events(server, first["events"])
    kinds = [e["kind"] for e in events]
    assert "run_started" in kinds and kinds[-1] == "done"
    rendered = [e["image"] for e in events if e["kind"] == "rendered"]
    assert len(rendered) == 2 and all(i["url"].startswith("/files/") for i in rendered)
    scored = next(e for e in events if e["kind"] == "scored")
    assert all(i["score"] is not None for i in scored["images"])

    follow = _send(server, session, "make it night")
    events = _events(server, follow["events"])
    assert events[-1]["kind"] == "done"
    turns = server.studio.store.chats.turns(session)
    assert [t["turn"] for t in turns] == [1, 2] and "at night" in turns[1]["idea"]

    like = _send(server, session, "more like the second one")
    assert _events(server, like["events"])[-1]["kind"] == "done"
    turns = server.studio.store.chats.turns(session)
    second_best = [r.id for r in server.studio.best(turns[1]["run_id"], k=2)][1]
    assert json.loads(turns[2]["interpretation_json"])["ref_render_id"] == second_best

    page = httpx.get(server.url + f"/?session={session}").text
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # the gallery lists the newest run (the follow-up) first
    gallery = page.split('id="gallery"')[1]
    newest = gallery.split('<span class="idea">')[1].split("</span>")[0]
    assert newest.endswith("at night")

    render_id = events[-1]["best"][0]["id"]  # of the "make it night" turn
    image = httpx.get(server.url + f"/image/{render_id}").text
    assert "&lt;script&gt;" in image and "<script>alert" not in image and "lineage" in image
    r = httpx.post(server.url + "/api/pick", json={"render_id": render_id, "choice": "pick"})
    assert r.json()["standing"] == "pick"
    assert server.studio.store.picks.history(render_id)[-1]["source"] == "web"
    r = httpx.post(server.url + "/api/pick", json={"render_id": 10_000, "choice": "pick"})
    assert r.status_code == 404
    assert httpx.get(server.url + "/image/10000").status_code == 404

    repro = httpx.post(server.url + f"/api/reproduce/{render_id}", json={}, timeout=300).json()
    assert repro["match"] is True, repro
    download = httpx.get(server.url + events[-1]["best"][0]["url"] + "?download=1")
    assert "attachment" in download.headers["content-disposition"]
    from reverie.store.pngmeta import read_reverie_meta

    path = server.studio.store.home / "dl.png"
    path.write_bytes(download.content)
    assert read_reverie_meta(path)["spec"]["seed"] == events[-1]["best"][0]["seed"]


def test_a_client_that_hangs_up_cancels_its_run_unless_kept(server):
    queue = ServeRequests(server.studio.store)
    store = server.studio.store
    gone = raw_generation(server.port, {"prompt": "a slow glacier", "n": 4, "quality": "hd", "size": "128x128"})
    kept = raw_generation(server.port, {"prompt": "a kept glacier", "n": 2, "size": "128x128", "keep": True})
    # Hang up once the run has images, mid-loop.
    wait_until(lambda: (row := queue.get(1)) and row["run_id"] and store.ok_count(row["run_id"]) >= 1,
               what="the first request's first image")
    wait_until(lambda: (row := queue.get(2)) and row["run_id"], what="the kept request's run")
    gone.close()
    kept.close()
    wait_until(lambda: queue.get(1)["status"] == "cancelled", what="the request to be cancelled")
    run = store.get_run(queue.get(1)["run_id"])
    assert run["status"] == "interrupted" and store.ok_count(run["id"]) < 12  # stopped before its 3 rounds of 4
    wait_until(lambda: queue.get(2)["status"] == "done", what="the kept request to finish")
    assert store.get_run(queue.get(2)["run_id"])["status"] == "done"
    status = httpx.get(server.url + "/api/requests/2").json()
    assert status["status"] == "done" and len(status["best"]) == 2


def test_with_a_token_every_route_needs_it(home):
    token = "s3cret-token-for-tests"
    with ThreadServer(home, token=token) as s:
        for path in ("/v1/models", "/api/requests/1", "/events/1"):
            r = httpx.get(s.url + path)
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error", path
        assert httpx.post(s.url + "/v1/images/generations", json={"prompt": "x"}).status_code == 401
        assert httpx.get(s.url + "/files/" + "0" * 64 + ".png").status_code == 401
        with pytest.raises(openai.AuthenticationError):
            client(s, api_key="wrong-token").models.list()
        assert "reverie" in {m.id for m in client(s, api_key=token).models.list()}
        # Pages send you to the login form; the right token sets a cookie, a wrong one does not.
        r = httpx.get(s.url + "/")
        assert r.status_code == 303 and r.headers["location"] == "/login"
        assert 'name="token"' in httpx.get(s.url + "/login").text
        with httpx.Client(base_url=s.url) as browser:
            r = browser.post("/login", data={"token": "nope"})
            assert r.headers["location"] == "/login?failed=1" and not browser.cookies
            browser.post("/login", data={"token": token})
            page = browser.get("/")
            assert page.status_code == 200 and 'id="idea"' in page.text


def test_a_non_loopback_bind_without_a_token_is_refused(tmp_path):
    for extra in ([], ["--token", "short"]):
        r = run_cli("serve", "--host", "0.0.0.0", *extra, home=tmp_path / "h", env={"REVERIE_TOKEN": ""})
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
        assert "--token" in lines[0] or "8 characters" in lines[0]
    assert not (tmp_path / "h" / "reverie.db").exists()  # refused before anything opened


def test_loopback_addresses():
    from reverie.cli.serve import is_loopback

    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "192.168.1.4", "::", "example.com"))


def test_batches_in_the_gallery_and_a_batch_page_with_each_ideas_kept_images(home, tmp_path):
    ideas = tmp_path / "night <ideas>.txt"
    ideas.write_text("a lighthouse <script>alert(1)</script>\na fox in the rain\n")
    done = run_cli("batch", str(ideas), "--per-prompt", "2", "--keep", "1", "--engine", "tiny", "--scorer", "heuristic",
                   "--megapixels", "0.01", "--json", home=home)
    assert done.returncode == 0, done.stderr
    batch_id = json.loads(done.stdout)["batch_id"]
    with ThreadServer(home) as server:
        front = httpx.get(server.url + "/").text
        assert f'href="/batch/{batch_id}"' in front and "night &lt;ideas&gt;.txt" in front
        assert str(tmp_path) not in front  # the file's name, never the machine's path
        page = httpx.get(f"{server.url}/batch/{batch_id}")
        assert page.status_code == 200
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text and "<script>alert" not in page.text
        assert "2/2 ideas done" in page.text and page.text.count('class="run batch-item"') == 2
        # Each idea shows the image it kept, served by content hash, with its pick buttons.
        store = server.studio.store
        for item in store.batches.items(batch_id):
            kept = [k["render_id"] for k in store.batches.keeps(item["id"])]
            assert len(kept) == 1
            sha = store.render_by_id(kept[0]).sha256
            assert f'src="/files/{sha}.png"' in page.text
        assert httpx.get(f"{server.url}/batch/{'0' * 16}").status_code == 404
        assert httpx.get(f"{server.url}/batch/..%2F..%2Fetc").status_code == 404


def test_the_stop_button_ends_a_web_turn_between_images_and_keeps_it(server):
    session = "web-stop"
    sent = _send(server, session, "a harbour at dawn", n=8, quality="hd")
    job = server.service.job(sent["request_id"])
    wait_until(lambda: any(e["kind"] == "rendered" for e in job.events), what="a first image")
    r = httpx.post(f"{server.url}/api/requests/{sent['request_id']}/stop", json={})
    assert r.status_code == 200 and r.json()["stopping"] is True
    events = _events(server, sent["events"])
    assert events[-1]["kind"] == "cancelled"
    store = server.studio.store
    [turn] = store.chats.turns(session)  # the turn is kept, with what it rendered
    run = store.get_run(turn["run_id"])
    assert run["status"] == "interrupted"
    assert 1 <= store.ok_count(run["id"]) < 8 * 3
    assert {i["id"] for i in events[-1]["best"]} <= {r.id for r in store.renders(run["id"])}
    assert store.chats.turns(session) and ServeRequests(store).get(sent["request_id"])["status"] == "cancelled"
    # The session goes on: a follow-up reads the stopped turn as its last.
    follow = _send(server, session, "make it night")
    assert _events(server, follow["events"])[-1]["kind"] == "done"
    assert [t["turn"] for t in store.chats.turns(session)] == [1, 2]
    # Stopping what is not running is a 404 in OpenAI's shape.
    again = httpx.post(f"{server.url}/api/requests/{sent['request_id']}/stop", json={})
    assert again.status_code == 404 and "not running" in again.json()["error"]["message"]


def test_the_image_page_counts_rounds_from_1_and_says_heuristic_and_the_held_out_judge(server):
    result = server.studio.make("a quiet harbour", n=2, rounds=2, seed=3, megapixels=0.01)
    first = min(result.renders, key=lambda r: (r.round, r.id))
    assert first.round == 0  # the store counts from 0; people read round 1
    page = httpx.get(f"{server.url}/image/{first.id}").text
    assert "<td>round</td><td>1</td>" in page and "round 1 · " in page and "round 0" not in page
    assert '<span class="scorer">heuristic</span>' in page  # the run's best, as cards
    assert "no held-out judge (`reverie models pull pickscore` adds one)" in page
    assert "composite by the default weighting" in page
    # Each component explained once, in the words `reverie show --explain` prints (scoring.explain).
    from markupsafe import escape

    from reverie.scoring.explain import explain_scores

    lines = explain_scores({"composite": first.scores.composite, "scorer": first.scores.scorer, **first.scores.values})
    assert "what these scores mean" in page and f'title="{escape(lines["noise"])}"' in page
    assert all(f"<li>{escape(line)}</li>" in page for line in lines.values())
    assert "<td>worker</td><td>local</td>" in page
