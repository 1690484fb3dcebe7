"""Logs: a failure leaves its traceback in <home>/logs/, the one-line error says where, no secret is written."""

from __future__ import annotations

import httpx
import pytest
import typer

from reverie.cli.common import friendly
from reverie.render.fixed import FixedLatencyEngine
from tests.serve_helpers import ThreadServer

TOKEN = "tok-7f3a9c2e5d1b4a68"
API_KEY = "sk-live0123456789abcdef"


class BrokenEngine(FixedLatencyEngine):
    """Fails the way a driver does: an exception whose message quotes what it was given."""

    def render(self, specs, progress=None, on_output=None):
        raise RuntimeError(f"device lost while talking to http://gpu/?api_key={API_KEY} "
                           f"(Authorization: Bearer {TOKEN})")


def test_a_request_that_fails_on_the_server_leaves_its_traceback_in_the_log_and_no_token(home):
    with ThreadServer(home, token=TOKEN, engine=BrokenEngine(latency=0.0)) as server:
        answer = httpx.post(f"{server.url}/v1/images/generations", timeout=120,
                            headers={"Authorization": f"Bearer {TOKEN}"},
                            json={"prompt": "a fox in the rain", "size": "128x128"})
        refused = httpx.get(f"{server.url}/v1/models", headers={"Authorization": "Bearer wrong-token-123"})
    assert answer.status_code == 500
    assert "logs/serve.log" in answer.json()["error"]["message"]
    assert refused.status_code == 401
    log = (home / "logs" / "serve.log").read_text()
    assert "Traceback (most recent call last)" in log
    assert "RuntimeError: device lost" in log
    assert "in render" in log  # the frame that raised, not only the message
    assert TOKEN not in log and API_KEY not in log and "wrong-token-123" not in log
    # Access lines: every request, the refused one too.
    assert "POST /v1/images/generations 500" in log
    assert "GET /v1/models 401" in log


def test_an_unexpected_cli_error_is_one_line_naming_the_log_which_holds_the_traceback(home, capsys):
    @friendly
    def command(home=None):
        raise ValueError(f"bad state (token={TOKEN})")

    with pytest.raises(typer.Exit) as exit:
        command(home=str(home))
    assert exit.value.exit_code == 1
    line = capsys.readouterr().err
    assert "ValueError: bad state" in line and str(home / "logs" / "cli.log") in line
    assert "Traceback" not in line
    log = (home / "logs" / "cli.log").read_text()
    assert "Traceback (most recent call last)" in log and "ValueError: bad state" in log
    assert TOKEN not in log


def test_a_home_that_is_not_there_gets_no_log_and_the_line_says_how_to_see_more(tmp_path, capsys):
    @friendly
    def command(home=None):
        raise ValueError("bad state")

    with pytest.raises(typer.Exit):
        command(home=str(tmp_path / "missing"))
    assert "--verbose" in capsys.readouterr().err
    assert not (tmp_path / "missing").exists()
