"""The morning report: one self-contained HTML contact sheet per batch.

Thumbnails are embedded as base64 JPEG data URIs, so the file can be mailed or copied alone;
each one links to the full PNG (relative to the report, inside the home) and names the
`reverie lineage` command that explains it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import shlex
import time
from pathlib import Path

THUMB_SIDE = 256

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;background:#f6f5f2;color:#222}
h1{font-size:22px;margin:0 0 4px}
.meta{color:#666;margin-bottom:20px}
section{background:#fff;border-radius:8px;padding:14px 16px;margin-bottom:18px;box-shadow:0 1px 3px #0002}
h2{font-size:17px;margin:0 0 2px}
.sub{color:#777;font-size:12px;margin-bottom:10px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(220px,100%),1fr));gap:14px}
figure{margin:0;min-width:0}
figure img{box-sizing:border-box;width:100%;max-width:256px;height:auto;border-radius:4px;border:1px solid #ddd;display:block;background:#eee}
figcaption{font-size:12px;margin-top:4px;overflow-wrap:anywhere}
.score{font-weight:600}
.dup{color:#b35c00}
.judge{color:#777;font-size:12px;margin:0 0 10px}
details.prompt{color:#555;margin:4px 0}
details.prompt summary{cursor:pointer}
details.prompt[open] summary .more{display:none}
details.prompt p{margin:4px 0 0}
code{font-size:11px;background:#f0f0f0;padding:1px 3px;border-radius:3px;word-break:break-all;display:inline-block;margin-top:4px}
@media (max-width:600px){body{margin:10px}section{padding:10px}}
.empty{color:#999}
.failed{color:#b00020;font-weight:600;margin-bottom:8px}
"""


def thumbnail_data_uri(path: str | Path, side: int = THUMB_SIDE) -> str:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        # Small test images are scaled up so the sheet stays readable; big ones down.
        scale = side / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=82)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


PROMPT_WORDS = 12


def prompt_details(prompt: str) -> str:
    """The prompt's first words, the whole of it one click away (the sheet stays a sheet)."""
    words = prompt.split()
    if len(words) <= PROMPT_WORDS:
        return f"<p class=prompt>{html.escape(prompt)}</p>"
    head = html.escape(" ".join(words[:PROMPT_WORDS]))
    return (f"<details class=prompt><summary>{head}<span class=more> … (full prompt)</span></summary>"
            f"<p>{html.escape(prompt)}</p></details>")


def report_path(home: Path, batch_id: str) -> Path:
    return Path(home) / "reports" / f"batch-{batch_id}.html"


def write_report(store, batch_id: str, clip_cache=None) -> Path:
    """Write (or rewrite) the contact sheet of a batch from the store; return its path.
    `clip_cache` (render id -> CLIP image embedding, the studio's) lets the portfolio line measure
    on CLIP without reading the images again."""
    from reverie.config import load_config
    from reverie.orchestrator.curation import clip_embedder, portfolio_line, run_diversity
    from reverie.scoring.display import held_out_line
    from reverie.store.pngmeta import atomic_write

    batch = store.batches.get(batch_id)
    config = load_config(store.home)
    options = json.loads(batch["options_json"])
    items = store.batches.items(batch_id)
    out = report_path(store.home, batch_id)
    home_arg = shlex.quote(str(store.home))
    esc = html.escape
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        "<meta name=viewport content=\"width=device-width, initial-scale=1\">",
        f"<title>reverie batch {esc(batch_id)}</title><style>{_CSS}</style></head><body>",
        f"<h1>reverie batch {esc(batch_id)}</h1>",
        f"<div class=meta>{esc(batch['source'])} · {len(items)} ideas · keep {esc(str(options.get('keep')))} per idea · "
        f"profile {esc(str(options.get('profile')))} · written {esc(time.strftime('%Y-%m-%d %H:%M', time.localtime()))}</div>",
    ]
    failed = [i for i in items if i["status"] == "failed"]
    if failed:
        parts.append(f"<div class=failed>{len(failed)} of {len(items)} ideas failed; fix them and run the same "
                     "command: only the failed ideas are tried again</div>")
    for item in items:
        rendered = store.ok_count(item["run_id"])
        budget = item["budget"] if item["budget"] is not None else "time-limited"
        diversity = run_diversity(store, item["run_id"])[0] if item["run_id"] else None
        parts.append(f"<section><h2>{item['idx'] + 1}. {esc(item['idea'])}</h2>"
                     f"<div class=sub>run {esc(item['run_id'] or '-')} · {rendered} rendered of {esc(str(budget))} · "
                     + (f"diversity {diversity:.2f} · " if diversity is not None else "") +
                     f"<code>reverie show {esc(item['run_id'] or '')} --home {esc(home_arg)}</code></div>")
        if item["status"] == "failed":
            parts.append(f"<div class=failed>failed: {esc(item['error'] or 'unknown error')}</div>")
        keeps = store.batches.keeps(item["id"])
        if item["run_id"] and keeps:  # about the whole set, so above the grid, not a cell of it
            parts.append(f"<p class=judge>{esc(held_out_line(store, item['run_id'], [k['render_id'] for k in keeps]))}</p>")
            embed = clip_embedder(store, item["run_id"], config, cache=clip_cache)
            parts.append(f"<p class=judge>{esc(portfolio_line(store, item['run_id'], len(keeps), config, embed))}</p>")
        parts.append("<div class=grid>")
        if not keeps:
            parts.append("<p class=empty>nothing kept yet</p>")
        for keep in keeps:
            render = store.render_by_id(keep["render_id"])
            full = Path(render.path)
            link = os.path.relpath(full, out.parent)
            score = f"{render.scores.composite:.3f}" if render.scores else "unscored"
            scorer = render.scores.scorer if render.scores else ""
            dup = " <span class=dup>near-duplicate</span>" if keep["near_duplicate"] else ""
            # Which machine made it, where there are several (a Ray actor, a ComfyUI server).
            worker = store.render_row(render.id)["worker"] or "local"
            made_on = f" · on {esc(worker)}" if worker != "local" else ""
            parts.append(
                f"<figure><a href=\"{esc(link)}\"><img src=\"{thumbnail_data_uri(full)}\" alt=\"seed {render.seed}\"></a>"
                f"<figcaption><span class=score>#{keep['rank']} · {score}</span> {esc(scorer)}{dup}<br>"
                f"seed {render.seed} · {render.spec.width}×{render.spec.height}{made_on}"
                f"{prompt_details(render.prompt)}"
                f"<code>reverie lineage {render.id} --home {esc(home_arg)}</code></figcaption></figure>"
            )
        parts.append("</div></section>")
    parts.append("</body></html>")
    atomic_write(out, "".join(parts).encode("utf-8"))
    return out
