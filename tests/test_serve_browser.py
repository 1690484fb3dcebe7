"""The web studio in a real headless Chromium (Debian's), driven by Playwright: type an idea, watch the
images arrive, open an image's lineage page, pick it; screenshots on the way."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from playwright import sync_api  # the dev extra; it drives the system chromium, no browser download

from tests.serve_helpers import ThreadServer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.mark.slow
def test_a_person_types_an_idea_sees_images_opens_lineage_and_picks(home, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("no chromium binary: apt-get install -y chromium to run the browser test")
    shots = tmp_path / "shots"
    shots.mkdir()
    with ThreadServer(home) as server, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(server.url + "/")
            assert page.title() == "reverie · studio"
            page.fill("#idea", "a lantern <b>festival</b> by the river")
            page.select_option("#n", "2")
            page.click("#send")
            # The live turn is replaced by the server's rendering of it when it ends (with its prompt).
            turn = page.locator("#turns .turn").first
            turn.locator(".card img").nth(1).wait_for(timeout=240_000)  # images arrive as they render
            page.wait_for_selector("#turns .turn.done", timeout=240_000)
            # The gallery below is refreshed when the turn ends: the run is there, newest first.
            page.wait_for_selector("#gallery .run .idea", timeout=60_000)
            assert "lantern" in page.locator("#gallery .run .idea").first.inner_text()
            page.screenshot(path=str(shots / "studio.png"), full_page=True)
            assert turn.locator(".card").count() == 2
            scores = turn.locator(".card .score").all_inner_texts()
            assert all(s.replace(".", "").isdigit() for s in scores), scores
            # The idea is shown as text, never as markup.
            assert turn.locator(".message").inner_text() == "a lantern <b>festival</b> by the river"
            assert turn.locator(".message b").count() == 0
            session = page.url.split("session=")[1]
            assert server.studio.store.chats.turns(session)[0]["message"].startswith("a lantern")

            turn.locator(".card a.thumb").first.click()
            page.wait_for_selector("#lineage-idea")
            render_id = int(page.url.rstrip("/").rsplit("/", 1)[1])
            assert page.inner_text("#lineage-idea") == "a lantern <b>festival</b> by the river"
            assert page.locator("ol.prompts li").count() >= 1
            assert page.locator("#hero").evaluate("img => img.naturalWidth") > 0
            page.click(".actions button.pick")
            page.wait_for_function("document.getElementById('standing').textContent === 'pick'")
            page.screenshot(path=str(shots / "lineage.png"), full_page=True)
            assert server.studio.store.picks.standing([render_id]) == {render_id: "pick"}
            assert server.studio.store.picks.history(render_id)[-1]["source"] == "web"

        finally:
            browser.close()
    for name in ("studio.png", "lineage.png"):
        assert (shots / name).stat().st_size > 10_000
