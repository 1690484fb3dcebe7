"""One curation: the VLM judge's pick leads what make, a batch (its kept set and contact sheet),
`reverie show` and serve's OpenAI endpoint return, each checked against a scripted judge."""

from __future__ import annotations

import base64
import hashlib
import json
import re

import httpx

from reverie.orchestrator.studio import Studio
from tests.conftest import run_cli
from tests.openai_server import Reply, ScriptedLLM, json_content
from tests.serve_helpers import ThreadServer

FIXED = {"engine": "fixed", "engine_options": {"latency": 0.0}}


def third_best(body: dict) -> Reply:
    """The judge always chooses the third of the candidates it is shown (best composite first)."""
    return Reply(json_content({"best": 3, "reason": "the clearest fox", "problems": ""}))


def by_composite(store, run_id: str) -> list:
    return sorted((r for r in store.renders(run_id) if r.scores), key=lambda r: (-r.scores.composite, r.id))


def judged_pick(store, run_id: str) -> int:
    """The judge's pick, checked to be the third by composite: were it the first, nothing here could fail."""
    pick = store.judge_pick(run_id)["render_id"]
    assert pick == by_composite(store, run_id)[2].id
    return pick


def test_the_judges_pick_leads_make_batch_show_and_the_openai_api(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    with ScriptedLLM(responder=third_best) as server:
        (home / "reverie.toml").write_text(f'[judge]\nvlm_url = "{server.url}"\nvlm_model = "scripted-model"\n')
        with Studio(home=home, scorer="heuristic", **FIXED) as studio:
            made = studio.make("a fox in the rain", seed=9, n=4, rounds=1, megapixels=0.02)
            pick = judged_pick(studio.store, made.run_id)
            assert made.best[0].id == pick

            ideas = tmp_path / "ideas.txt"
            ideas.write_text("a red car at night\n")
            batch = studio.batch(ideas, per_prompt=4, keep=2, megapixels=0.02)
            item = batch.items[0]
            batch_pick = judged_pick(studio.store, item.run_id)
            assert item.kept[0].id == batch_pick
            sheet = batch.report_path.read_text()
            assert re.findall(r"reverie lineage (\d+)", sheet)[0] == str(batch_pick)

        shown = run_cli("show", made.run_id, "--json", home=home)
        assert shown.returncode == 0, shown.stderr
        best = json.loads(shown.stdout)["best"]
        assert best[0]["id"] == pick and best[0]["judge_pick"]

        with ThreadServer(home, **FIXED) as served:
            r = httpx.post(served.url + "/v1/images/generations",
                           json={"prompt": "a kite over the sea", "n": 4, "size": "128x128", "seed": 5}, timeout=300)
            assert r.status_code == 200, r.text
            body = r.json()
            served_pick = judged_pick(served.studio.store, body["reverie"]["run_id"])
            first = hashlib.sha256(base64.b64decode(body["data"][0]["b64_json"])).hexdigest()
            assert first == served.studio.store.render_by_id(served_pick).sha256
            assert len(body["data"]) == 4  # n images, as OpenAI clients expect
