"""edit, batch, chat and expand over the warm server, as make: with a `reverie serve` running for the
home, the client process imports no torch, and its answer (the `--json` keys, the printed lines),
its exit codes and the one-line errors are those of the same command with --local. make's new
controls travel: a warm make stores the same request and render specs as the local one.

One detached server on the tiny engine serves the whole module."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys

import pytest

from tests.conftest import run_cli
from tests.serve_helpers import free_port, wait_until
from tests.test_warm_cli import HEAVY, client, imported

LOCAL = ("--local", "--engine", "tiny", "--scorer", "heuristic")
SMALL = ("--n", "1", "--rounds", "1")


@pytest.fixture(scope="module")
def warm_home(tmp_path_factory, tiny_models_dir):
    """A home with a style in its reverie.toml (read by the server when it starts) and its server."""
    home = tmp_path_factory.mktemp("warm") / "home"
    home.mkdir()
    (home / "models").symlink_to(tiny_models_dir, target_is_directory=True)
    (home / "reverie.toml").write_text('[styles.ink]\nprompt = "{prompt}, ink drawing"\nnegative = "colour"\n')
    started = run_cli("serve", "--engine", "tiny", "--scorer", "heuristic", "--port", str(free_port()), "--detach",
                      home=home)
    assert started.returncode == 0, started.stderr
    yield home
    assert run_cli("serve", "--stop", home=home).returncode == 0


def no_heavy_imports(done: subprocess.CompletedProcess, numpy: bool = False) -> None:
    """The client loaded no model: in-process, the same command imports torch. (Reading a batch
    file or the home's store imports numpy, through sqlite-utils: a tenth of a second, no model.)"""
    heavy = imported(done.stderr) & (set(HEAVY) - ({"numpy"} if numpy else set()))
    assert not heavy, heavy


def first_error(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if line.startswith("error:"))


def rows(home, sql: str, *args) -> list[dict]:
    with sqlite3.connect(home / "reverie.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute(sql, args)]


def test_make_controls_travel_to_the_warm_server(warm_home):
    """--exact, --steps, --cfg, --negative, --sampler, --style, --diversity, --search, --shift: the
    warm run's request and specs are the local run's (the Request travels whole)."""
    options = ("heron", "--n", "2", "--rounds", "1", "--megapixels", "0.02", "--seed", "7", "--steps", "3", "--cfg", "2.5",
               "--negative", "blurry", "--sampler", "euler", "--style", "ink", "--diversity", "0.5", "--search", "seeds",
               "--exact", "--shift", "4", "--json")
    warm = client("make", *options, home=warm_home)
    assert warm.returncode == 0, warm.stderr[-2000:]
    no_heavy_imports(warm)
    local = run_cli("make", *options, *LOCAL, home=warm_home)
    assert local.returncode == 0, local.stderr[-2000:]
    runs = [json.loads(done.stdout)["run_id"] for done in (warm, local)]
    assert runs[0] != runs[1]
    requests = [rows(warm_home, "select request_json from runs where id = ?", r)[0]["request_json"] for r in runs]
    assert requests[0] == requests[1]
    sent = json.loads(requests[0])
    assert sent["style"][0] == "ink" and sent["exact"] is True
    specs = [[r["spec_json"] for r in rows(warm_home, "select spec_json from renders where run_id = ? order by seed", run)]
             for run in runs]
    assert specs[0] == specs[1] and len(specs[0]) == 2

    # --handoff-steps travels too: the server checks it against --cfg as in-process, the same line and exit code.
    clash = ("heron", "--n", "1", "--handoff-steps", "1", "--cfg", "2.5")
    bad = [client("make", *clash, home=warm_home), run_cli("make", *clash, *LOCAL, home=warm_home)]
    assert [b.returncode for b in bad] == [2, 2]
    assert first_error(bad[0].stderr) == first_error(bad[1].stderr) and "--handoff-steps" in first_error(bad[0].stderr)


def test_edit_sends_the_image_and_answers_as_in_process(warm_home, tmp_path):
    from PIL import Image

    source = tmp_path / "photo.png"
    Image.new("RGB", (96, 96), (40, 90, 160)).save(source)
    args = ("edit", str(source), "make it night", *SMALL, "--seed", "3", "--json")
    warm = client(*args, home=warm_home)
    assert warm.returncode == 0, warm.stderr[-2000:]
    no_heavy_imports(warm)
    local = run_cli(*args, *LOCAL, home=warm_home)
    assert local.returncode == 0, local.stderr[-2000:]
    made, here = json.loads(warm.stdout), json.loads(local.stdout)
    assert set(made) == set(here) and set(made["best"][0]) == set(here["best"][0])
    # The source was sent as bytes and kept in the home: the run's source is the same image.
    sources = [json.loads(rows(warm_home, "select request_json from runs where id = ?", m["run_id"])[0]["request_json"])
               ["source"]["image_sha"] for m in (made, here)]
    assert sources[0] == sources[1]

    # An image of the home by its hash prefix: the client reads the file and sends it.
    by_hash = client("edit", made["best"][0]["sha256"][:12], "make it day", *SMALL, "--json", home=warm_home)
    assert by_hash.returncode == 0, by_hash.stderr[-2000:]
    no_heavy_imports(by_hash, numpy=True)
    edited = rows(warm_home, "select request_json from runs where id = ?", json.loads(by_hash.stdout)["run_id"])
    assert json.loads(edited[0]["request_json"])["source"]["render_id"] == made["best"][0]["id"]

    # Bad input: the same line (naming the file as the person wrote it) and exit code either way.
    junk = tmp_path / "junk.png"
    junk.write_text("not an image")
    bad = [client("edit", str(junk), "make it night", home=warm_home), run_cli("edit", str(junk), "make it night", *LOCAL,
                                                                               home=warm_home)]
    assert [b.returncode for b in bad] == [2, 2]
    assert first_error(bad[0].stderr) == first_error(bad[1].stderr) and str(junk) in first_error(bad[0].stderr)


def test_batch_runs_on_the_server_and_answers_as_in_process(warm_home, tmp_path):
    ideas = tmp_path / "ideas.txt"
    ideas.write_text("a fox\na red barn at dusk\n")
    args = ("batch", str(ideas), "--per-prompt", "1", "--n", "1", "--keep", "1", "--megapixels", "0.02", "--json")
    warm = client(*args, home=warm_home)
    assert warm.returncode == 0, warm.stderr[-2000:]
    no_heavy_imports(warm, numpy=True)
    local = run_cli(*args, "--steps", "2", *LOCAL, home=warm_home)  # another batch id: a run of its own
    assert local.returncode == 0, local.stderr[-2000:]
    made, here = json.loads(warm.stdout), json.loads(local.stdout)
    assert set(made) == set(here) and set(made["items"][0]) == set(here["items"][0])
    assert [i["status"] for i in made["items"]] == ["done", "done"]

    bad_file = tmp_path / "bad.jsonl"
    bad_file.write_text('{"idea": "a fox", "colour": 3}\n')
    bad = [client("batch", str(bad_file), home=warm_home), run_cli("batch", str(bad_file), *LOCAL, home=warm_home)]
    assert [b.returncode for b in bad] == [2, 2]
    assert first_error(bad[0].stderr) == first_error(bad[1].stderr)


def test_ctrl_c_in_the_client_interrupts_the_batch_on_the_server(warm_home, tmp_path):
    """As in-process: Ctrl-C stops the batch between images (exit 130), and the same command continues it."""
    long = tmp_path / "long.txt"
    long.write_text("idea number one\nidea number two\n")
    args = ("batch", str(long), "--per-prompt", "8", "--n", "2", "--keep", "1", "--megapixels", "0.02", "--json")
    command = [sys.executable, "-m", "reverie", *args, "--home", str(warm_home)]
    # Ctrl-C as a terminal sends it, whatever this test runner does with SIGINT itself (a runner in
    # the background of a shell ignores it, and its children inherit that).
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    renders = ("select r.id from renders r join batch_items i on i.run_id = r.run_id join batches b on b.id = i.batch_id "
               "where b.source = ? and r.status = 'ok'")
    wait_until(lambda: rows(warm_home, renders, str(long)), what="a first image of the batch on the server")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err
    wait_until(lambda: rows(warm_home, "select status from batches where source = ?", str(long))[0]["status"]
               == "interrupted", what="the server to mark the batch interrupted")
    assert len(rows(warm_home, renders, str(long))) < 16  # stopped before its end
    again = client(*args, home=warm_home)
    assert again.returncode == 0, again.stderr[-2000:]
    assert [i["status"] for i in json.loads(again.stdout)["items"]] == ["done"] * 2
    assert len(rows(warm_home, renders, str(long))) == 16  # continued: nothing rendered twice


def turn_shape(stdout: str) -> list[str]:
    """chat's printed lines with what differs between two runs (ids, scores, seeds, paths, the
    prompt's words and the widths they give the table) taken out."""
    shape = []
    for line in stdout.splitlines():
        line = re.sub(r"session \S+", "session S", line)
        line = re.sub(r"\(run [^)]+\)", "(run R)", re.sub(r"render \d+", "render N", line))
        image = re.match(r"\s*\d+\s+[0-9.]+ (\w+)\s+\d+\s+\d+x\d+\s+\d+\s", line)
        if image:
            line = f"image ({image.group(1)})"
        elif re.match(r"\s*\d+\s+/", line):
            line = "path"
        elif line.startswith("  prompt:"):
            line = "  prompt"
        else:
            line = re.sub(r"─+", "─", " ".join(line.split()))
        shape.append(line)
    return shape


def test_chat_turns_go_through_the_server(warm_home):
    script = "a fox in the rain\n/bogus\nmake it night\n"
    warm = subprocess.run([sys.executable, "-X", "importtime", "-m", "reverie", "chat", "--session", "warm", *SMALL,
                           "--megapixels", "0.02", "--home", str(warm_home)], input=script, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})
    assert warm.returncode == 0, warm.stderr[-2000:]
    no_heavy_imports(warm)
    local = run_cli("chat", "--session", "local", *SMALL, "--megapixels", "0.02", *LOCAL, home=warm_home, input=script)
    assert local.returncode == 0, local.stderr[-2000:]
    assert turn_shape(warm.stdout) == turn_shape(local.stdout)
    assert "turn 2 (run" in warm.stdout
    assert first_error(warm.stderr) == first_error(local.stderr)  # a bad command: one line, the chat goes on
    # The session is the home's: the same name continues it, whichever way in.
    resumed = run_cli("chat", "--session", "warm", home=warm_home, input="/quit\n")
    assert resumed.returncode == 0 and "resumed after turn 2" in resumed.stdout


def test_expand_asks_the_server(warm_home):
    warm = client("expand", "a fox", "--k", "2", "--seed", "4", "--json", home=warm_home)
    assert warm.returncode == 0, warm.stderr[-2000:]
    no_heavy_imports(warm)
    local = run_cli("expand", "a fox", "--k", "2", "--seed", "4", "--json", "--local", home=warm_home)
    assert json.loads(warm.stdout) == json.loads(local.stdout)
    bad = [client("expand", "a fox", "--profile", "nope", home=warm_home),
           run_cli("expand", "a fox", "--profile", "nope", "--local", home=warm_home)]
    assert [b.returncode for b in bad] == [2, 2] and first_error(bad[0].stderr) == first_error(bad[1].stderr)


def test_another_homes_request_is_refused_and_an_unknown_option_named(warm_home, tmp_path):
    import httpx

    url = json.loads((warm_home / "serve.json").read_text())["url"]
    for route, body in (("/api/cli/expand", {"idea": "a fox"}), ("/api/cli/chat/open", {}),
                        ("/api/cli/chat/command", {"session": "s", "message": "/help"}),
                        ("/api/cli/chat/turn", {"session": "s", "message": "a fox"})):
        answer = httpx.post(url + route, json={**body, "home": str(tmp_path)}, timeout=30)
        assert answer.status_code == 409 and "another home" in answer.json()["error"]["message"], route
    # A client newer than its server: the option it does not know is named, not dropped.
    answer = httpx.post(url + "/api/cli/make", json={"idea": "a fox", "options": {"colour": 3}}, timeout=30)
    assert answer.status_code == 400 and "does not know colour" in answer.json()["error"]["message"]


def test_the_cli_routes_keep_the_token_and_same_site_rules(home):
    import httpx

    from tests.serve_helpers import ThreadServer

    routes = ("/api/cli/make", "/api/cli/edit", "/api/cli/batch", "/api/cli/chat/open", "/api/cli/chat/command",
              "/api/cli/chat/turn", "/api/cli/expand", "/api/cli/batch/abc/stop")
    with ThreadServer(home, token="s3cret") as server:
        for route in routes:
            refused = httpx.post(server.url + route, json={"idea": "a fox"}, timeout=30)
            assert refused.status_code == 401, route
        token = {"Authorization": "Bearer s3cret"}
        for route in routes:
            cross = httpx.post(server.url + route, json={"idea": "a fox"}, timeout=30,
                               headers={**token, "Sec-Fetch-Site": "cross-site"})
            assert cross.status_code == 403, route
        assert httpx.get(server.url + "/api/cli/result/1", timeout=30).status_code == 401
        answered = httpx.post(server.url + "/api/cli/expand", json={"idea": "a fox", "home": str(home)}, headers=token,
                              timeout=30)
        assert answered.status_code == 200 and answered.json()["expansions"][0]["prompt"]
