"""The contact sheet: self-contained, escaped, linked to the full images and their lineage."""

from __future__ import annotations

import base64
import io
import os
import re

from PIL import Image

from reverie.orchestrator.studio import Studio


def test_report_is_self_contained_and_escapes_what_users_wrote(tmp_path):
    file = tmp_path / "ideas.txt"
    file.write_text('<script>alert("x")</script> a fox & a hound\n')
    with Studio(home=tmp_path / "home", engine="fixed", engine_options={"latency": 0.0}, scorer="heuristic") as studio:
        result = studio.batch(file, per_prompt=2, keep=2, megapixels=0.02)
    html = result.report_path.read_text()
    assert result.report_path.parent == tmp_path / "home" / "reports"
    assert "<script>" not in html and "&lt;script&gt;" in html and "&amp; a hound" in html
    assert re.search(r"· diversity \d\.\d\d ·", html)  # the run's diversity beside its budget
    # Nothing fetched from anywhere: every picture is inline, every link is a local file.
    assert not re.search(r"(src|href)=\"(https?:)?//", html)
    thumbs = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', html)
    assert len(thumbs) == 2
    with Image.open(io.BytesIO(base64.b64decode(thumbs[0]))) as im:
        assert im.format == "JPEG" and max(im.size) == 256
    for r in result.items[0].kept:
        assert f'href="{os.path.relpath(r.path, result.report_path.parent)}"' in html
        assert (result.report_path.parent / os.path.relpath(r.path, result.report_path.parent)).resolve() == \
            (tmp_path / "home").resolve() / os.path.relpath(r.path, tmp_path / "home")
        assert f"reverie lineage {r.id} --home" in html and f"seed {r.seed}" in html
        assert f"{r.scores.composite:.3f}" in html


def test_sheet_keeps_the_judge_note_out_of_the_grid_and_every_prompt_whole(tmp_path):
    file = tmp_path / "ideas.txt"
    file.write_text("a fox in the rain\n")
    with Studio(home=tmp_path / "home", engine="fixed", engine_options={"latency": 0.0}, scorer="heuristic") as studio:
        result = studio.batch(file, per_prompt=2, keep=2, megapixels=0.02)
    html = result.report_path.read_text()
    grids = re.findall(r"<div class=grid>(.*?)</div></section>", html, flags=re.S)
    assert grids and all("held-out" not in g and "judge" not in g.split("<figure>")[0] for g in grids)
    assert html.index("held-out") < html.index("<div class=grid>")
    for r in result.items[0].kept:
        # The whole prompt is in the sheet, behind its first words when it is long.
        assert html.count(r.prompt.replace("&", "&amp;")) >= 1
