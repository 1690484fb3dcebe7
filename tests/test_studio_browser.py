"""The web studio as a person sees it, in Debian's headless Chromium driven by Playwright: live steps
and previews before the first image, the layout at a laptop's and a phone's width (every card's
buttons inside its card, nothing wider than the window), the session across a reload, the empty
idea, the prompt diff between turns, and "use this recipe". Screenshots go to $REVERIE_SHOTS (or
the test's tmp folder)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from playwright import sync_api

from tests.serve_helpers import ThreadServer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SIZES = {"laptop": (1366, 900), "phone": (390, 844)}

# Records, in order, what the person sees appear in the live turn: a step count, a preview, an image.
WATCH = """
window.seen = [];
new MutationObserver(() => {
  const turn = document.querySelector('#turns .turn.live');
  if (!turn) return;
  const last = window.seen[window.seen.length - 1];
  const steps = turn.querySelector('.progress .steps');
  if (steps && /step \\d+\\/\\d+/.test(steps.textContent) && !window.seen.includes('step')) window.seen.push('step');
  const preview = turn.querySelector('.progress img.preview');
  if (preview && preview.src.startsWith('data:image/png') && !window.seen.includes('preview')) window.seen.push('preview');
  if (turn.querySelector('.card') && !window.seen.includes('image')) window.seen.push('image');
  const queued = document.querySelector('#queue-list li .state');
  if (queued && queued.textContent && !window.seen.includes('queue')) window.seen.push('queue');
}).observe(document, {subtree: true, childList: true, attributes: true, characterData: true});
"""

# Every card's buttons and links lie inside the card; no card pokes out of the window; no sideways scroll.
LAYOUT = """
() => {
  const bad = [];
  const width = document.documentElement.clientWidth;
  for (const card of document.querySelectorAll('.card')) {
    const c = card.getBoundingClientRect();
    if (c.width === 0) continue;
    if (c.left < -0.5 || c.right > width + 0.5) bad.push(`card ${card.dataset.render} spans ${c.left}..${c.right} of ${width}`);
    for (const b of card.querySelectorAll('button, a.recipe')) {
      const r = b.getBoundingClientRect();
      if (r.left < c.left - 0.5 || r.right > c.right + 0.5 || r.top < c.top - 0.5 || r.bottom > c.bottom + 0.5)
        bad.push(`${b.className} of card ${card.dataset.render} at ${r.left}..${r.right} outside ${c.left}..${c.right}`);
    }
  }
  const doc = document.documentElement;
  if (doc.scrollWidth > doc.clientWidth) bad.push(`page is ${doc.scrollWidth}px wide in a ${doc.clientWidth}px window`);
  return {bad, cards: document.querySelectorAll('.card').length};
}
"""


def shots_dir(tmp_path: Path) -> Path:
    d = Path(os.environ.get("REVERIE_SHOTS") or tmp_path / "shots")
    d.mkdir(parents=True, exist_ok=True)
    return d


def check_layout(page, shots: Path, name: str) -> None:
    result = page.evaluate(LAYOUT)
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    assert result["cards"] > 0, f"{name}: no cards to check"
    assert result["bad"] == [], f"{name}: {result['bad']}"


@pytest.mark.slow
def test_studio_shows_progress_holds_its_layout_and_keeps_the_session(home, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("no chromium binary: apt-get install -y chromium to run the browser test")
    shots = shots_dir(tmp_path)
    with ThreadServer(home) as server, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            context = browser.new_context(viewport={"width": 1366, "height": 900})
            context.add_init_script(WATCH)
            page = context.new_page()
            page.goto(server.url + "/")

            # An empty idea says so, and sends nothing.
            page.click("#send")
            page.wait_for_selector("#send-error:not([hidden])")
            assert "Describe an image" in page.inner_text("#send-error")
            assert page.locator("#turns .turn").count() == 0

            # Turn 1: steps and a preview show before the first image arrives.
            page.fill("#idea", "digital concept art of a lantern festival by the river")
            page.select_option("#n", "2")
            page.click("#send")
            page.wait_for_function("window.seen.includes('preview')", timeout=240_000)
            page.screenshot(path=str(shots / "live.png"))  # for a person to look at; the order is asserted below
            page.wait_for_selector("#turns .turn.done[data-run]", timeout=240_000)
            seen = page.evaluate("window.seen")
            assert "step" in seen and "preview" in seen and "image" in seen and "queue" in seen, seen
            assert seen.index("step") < seen.index("image") and seen.index("preview") < seen.index("image"), seen
            first = page.locator("#turns .turn.done").first
            assert "lantern" in first.locator(".expanded .prompt").inner_text()

            # Turn 2: its prompt shows what changed from turn 1.
            page.fill("#idea", "make it night")
            page.click("#send")
            # A finished turn is replaced by the server's rendering of it, which carries its run and the diff.
            page.wait_for_function("document.querySelectorAll('#turns .turn.done[data-run]').length === 2",
                                   timeout=240_000)
            second = page.locator("#turns .turn.done").nth(1)
            added = second.locator(".expanded .prompt ins").all_inner_texts()
            assert any("night" in text for text in added), added

            # The session survives a reload, and coming back to / finds it again.
            session = page.url.split("session=")[1].split("&")[0]
            page.reload()
            assert page.locator("#turns .turn.done").count() == 2
            page.goto(server.url + "/")
            page.wait_for_url(f"**session={session}**")
            assert page.locator("#turns .turn.done").count() == 2
            page.wait_for_selector("#gallery .card")

            for name, (width, height) in SIZES.items():
                page.set_viewport_size({"width": width, "height": height})
                page.wait_for_timeout(300)  # layout settles; nothing here is timed
                check_layout(page, shots, f"studio-{name}")

            # Use this recipe: the image's prompt, seed and settings land in the form, verbatim.
            card = second.locator(".card").first
            render_id = int(card.get_attribute("data-render"))
            spec = server.studio.store.render_by_id(render_id).spec
            card.locator("a.recipe").click()
            page.wait_for_url(f"**recipe={render_id}**")
            assert page.input_value("#idea") == spec.prompt
            assert page.input_value("#seed") == str(spec.seed)
            assert page.input_value("#steps") == str(spec.steps)
            assert page.is_checked("#exact")
            assert session in page.url  # the recipe opens in the same session

            # The image page holds its layout too.
            page.goto(f"{server.url}/image/{render_id}")
            for name, (width, height) in SIZES.items():
                page.set_viewport_size({"width": width, "height": height})
                page.wait_for_timeout(300)
                check_layout(page, shots, f"image-{name}")
        finally:
            browser.close()
    for name in ("studio-laptop", "studio-phone", "image-laptop", "image-phone"):
        assert (shots / f"{name}.png").stat().st_size > 10_000


@pytest.mark.slow
def test_contact_sheet_holds_its_layout_and_opens_full_prompts(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("no chromium binary: apt-get install -y chromium to run the browser test")
    from reverie.orchestrator.studio import Studio

    shots = shots_dir(tmp_path)
    file = tmp_path / "ideas.txt"
    file.write_text("a fox in the rain\nan owl on a lamp post at dusk\n")
    with Studio(home=tmp_path / "home", engine="fixed", engine_options={"latency": 0.0}, scorer="heuristic") as studio:
        report = studio.batch(file, per_prompt=3, keep=3, megapixels=0.02).report_path
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(report.as_uri())
            for name, (width, height) in SIZES.items():
                page.set_viewport_size({"width": width, "height": height})
                page.wait_for_timeout(300)
                bad = page.evaluate("""() => {
                  const bad = [], doc = document.documentElement;
                  if (doc.scrollWidth > doc.clientWidth) bad.push(`page ${doc.scrollWidth} > ${doc.clientWidth}`);
                  for (const f of document.querySelectorAll('figure')) {
                    const b = f.getBoundingClientRect();
                    for (const c of f.querySelectorAll('img, code, details')) {
                      const r = c.getBoundingClientRect();
                      if (r.right > b.right + 0.5 || r.left < b.left - 0.5) bad.push(c.tagName + ' outside its figure');
                    }
                  }
                  for (const g of document.querySelectorAll('.grid'))
                    for (const child of g.children) if (child.tagName !== 'FIGURE' && !child.classList.contains('empty'))
                      bad.push('a ' + child.className + ' note inside the grid');
                  return bad;
                }""")
                page.screenshot(path=str(shots / f"sheet-{name}.png"), full_page=True)
                assert bad == [], f"{name}: {bad}"
            summary = page.locator("details.prompt summary").first
            full = page.locator("details.prompt p").first
            assert not full.is_visible()
            summary.click()
            assert full.is_visible() and len(full.inner_text()) > len(summary.inner_text()) - len(" … (full prompt)")
        finally:
            browser.close()


@pytest.mark.slow
def test_the_image_page_edits_its_image_and_shows_the_results_parent(home, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("no chromium binary: apt-get install -y chromium to run the browser test")
    shots = shots_dir(tmp_path)
    with ThreadServer(home) as server, sync_api.sync_playwright() as p:
        parent = server.studio.make("a red kite", n=1, rounds=1, seed=4, megapixels=0.01).best[0].id
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_context(viewport={"width": 1366, "height": 900}).new_page()
            page.goto(f"{server.url}/image/{parent}")
            page.fill("#edit-instruction", "make it night")
            page.fill("#edit-n", "2")
            page.click("#edit-form button[type=submit]")
            page.wait_for_selector("#edits .turn.live .status", timeout=60_000)  # the turn shows at once
            page.wait_for_selector("#edits .turn.done", timeout=240_000)
            assert page.inner_text("#edits .turn .idea") == f"edit of image {parent}"
            links = page.locator("#edits .card .parent a")
            assert links.count() == 2
            assert {links.nth(i).get_attribute("href") for i in range(2)} == {f"/image/{parent}"}
            for name, (width, height) in SIZES.items():
                page.set_viewport_size({"width": width, "height": height})
                page.wait_for_timeout(300)
                check_layout(page, shots, f"edit-{name}")
            # A result's own page names its parent.
            page.locator("#edits .card a.thumb").first.click()
            page.wait_for_selector("#edit-parent")
            assert page.inner_text("#edit-parent") == f"edit of image {parent}: “make it night”"
        finally:
            browser.close()
