"""The CLI over a warm `reverie serve`: the server's file in the home, and the commands handed to it.

When a server runs for the same home, `make`, `edit`, `batch`, `chat` and `expand` send their work
there (reverie/serve/cli_api.py) and draw their progress from the server's events: this process
imports no torch and loads no model. Results, exit codes and `--json` are the same as in-process.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from reverie.processes import pid_alive
from reverie.types import Event, Notice, ReverieError, event_from

SERVER_FILE = "serve.json"


@dataclass
class Server:
    url: str
    pid: int
    token: Optional[str]
    home: str

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def server_file(home: Path) -> Path:
    return Path(home) / SERVER_FILE


def write_server_file(home: Path, *, host: str, port: int, token: Optional[str]) -> Path:
    """Say where this home's server listens (only its owner may read it: it may hold the token)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else (f"[{host}]" if ":" in host else host)
    path = server_file(home)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": f"http://{shown}:{port}", "pid": os.getpid(), "token": token, "home": str(Path(home).resolve()),
                   "started": time.time()}, f)
    os.replace(tmp, path)
    return path


def remove_server_file(home: Path) -> None:
    """Remove the file if it is this process's (a second server on the home must not drop the first's)."""
    path = server_file(home)
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def find_server(home: Optional[str]) -> Optional[Server]:
    """This home's running server, or None (no file, a dead pid, or a file from another home)."""
    from reverie.config import resolve_home

    path = server_file(resolve_home(home))
    try:
        data = json.loads(path.read_text())
        server = Server(url=str(data["url"]), pid=int(data["pid"]), token=data.get("token"), home=str(data["home"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not pid_alive(server.pid) or Path(server.home) != path.parent.resolve():
        return None
    return server


def answer(response) -> dict:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code >= 400:
        message = (body.get("error") or {}).get("message") if isinstance(body.get("error"), dict) else None
        raise ReverieError(message or f"the server answered {response.status_code}")
    return body


class UnexpectedServerError(Exception):
    """The work failed on the server for a reason nobody caused: exit 1, as in-process."""


def handing_server(home: Optional[str], local: bool, own: dict[str, Any]) -> Optional[Server]:
    """The warm server to hand a command to, or None to run it here: --local, no server for this
    home, or a flag that is this process's own (an engine, a prompt writer, a file of the client's),
    which says so in one line."""
    if local:
        return None
    server = find_server(home)
    given = [flag for flag, value in own.items() if value]
    if server is not None and given:
        from reverie.cli.common import err, say

        say(err, "reverie:", f"running in this process: {given[0]} is for this process, and the server for this "
                             f"home ({server.url}) runs its own engine (--local says so and stays quiet)")
        return None
    return server


def home_of(home: Optional[str]) -> str:
    from reverie.config import resolve_home

    return str(resolve_home(home).resolve())


def client(server: Server):
    import httpx

    return httpx.Client(base_url=server.url, headers=server.headers(), timeout=httpx.Timeout(30, read=None))


def post(http, path: str, body: dict) -> dict:
    import httpx

    try:
        return answer(http.post(path, json=body))
    except httpx.HTTPError as e:
        raise ReverieError(f"the server for this home at {http.base_url} did not answer ({type(e).__name__}): "
                           "run with --local, or restart it with `reverie serve`") from None


def follow(http, events: str, progress: Callable[[Event], None]) -> None:
    """Feed a request's server-sent events to progress until it ends."""
    with http.stream("GET", events) as stream:
        for line in stream.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            kind = event.pop("kind")
            if kind in ("done", "failed", "cancelled"):
                return
            progress(event_from(kind, event))


def failed(body: dict) -> Exception:
    message = body.get("error") or f"the run was {body['status']}"
    return UnexpectedServerError(message) if body.get("unexpected") else ReverieError(message)


def remote_run(server: Server, path: str, body: dict[str, Any], progress: Callable[[Event], None],
               on_request: Callable[[int], None] = lambda request_id: None) -> dict:
    """Run a make or an edit on the server, feeding its events to progress; `make --json`'s object."""
    with client(server) as http:
        accepted = post(http, path, body)
        for message in accepted.get("notices", []):  # said while the server checked the request
            progress(Notice(message=message))
        request_id = int(accepted["request_id"])
        on_request(request_id)
        follow(http, accepted["events"], progress)
        done = answer(http.get(f"/api/cli/result/{request_id}"))
    if done["status"] != "done":
        raise failed(done)
    return {**done["result"], "scorers": done.get("scorers", [])}


def remote_make(server: Server, request: dict[str, Any], progress: Callable[[Event], None],
                on_request: Callable[[int], None] = lambda request_id: None) -> dict:
    return remote_run(server, "/api/cli/make", request, progress, on_request)


def run_remote(server: Server, progress, as_json: bool,
               run: Callable[[Callable[[int], None]], dict]) -> tuple[dict, list]:
    """A make or an edit on the warm server, as in-process: Ctrl-C stops it there (exit 130), a
    failure nobody caused is exit 1; the answer in make --json's shape, with its scorers."""
    import typer

    from reverie.cli.common import err, say

    asked: list[int] = []
    if not as_json:
        say(err, "reverie:", f"handing the run to the server for this home at {server.url} (--local runs it here)")
    try:
        made = run(asked.append)
    except KeyboardInterrupt:
        if asked:
            stop_request(server, asked[0])
        raise
    except UnexpectedServerError as e:
        say(err, "error:", str(e), style="bold red")
        raise typer.Exit(1)
    finally:
        progress.stop()
    scorers = made.pop("scorers", [])
    made["home"] = str(Path(made["home"]))
    return made, scorers


def stop_request(server: Server, request_id: int) -> None:
    import httpx

    try:
        httpx.post(f"{server.url}/api/requests/{request_id}/stop", headers=server.headers(), json={}, timeout=10)
    except httpx.HTTPError:
        pass


def image_bytes(path: str, what: str) -> dict[str, str]:
    """An edit's source or mask as it travels: its bytes, and the name the person gave (for messages).
    A path that is not a regular file is the in-process line (the store, and numpy with it, is
    imported only then)."""
    import base64
    import os

    if not os.path.isfile(path):
        if not os.path.lexists(path):
            raise ReverieError(f"the {what} {path} does not exist: give a PNG, JPEG or WebP file, or a render id / "
                               "sha prefix of an image in this home")
        from reverie.store.lineage import check_regular_file

        check_regular_file(path)
    with open(path, "rb") as f:
        return {"b64": base64.b64encode(f.read()).decode("ascii"), "name": path}


def remote_expand(server: Server, body: dict[str, Any], progress: Callable[[Event], None]) -> list[dict]:
    with client(server) as http:
        answered = post(http, "/api/cli/expand", body)
    for message in answered.get("notices", []):
        progress(Notice(message=message))
    return answered["expansions"]


def remote_batch(server: Server, body: dict[str, Any], progress: Callable[[Event], None]) -> dict:
    """Run a batch on the server, its events fed to progress; the last line is its result. Ctrl-C
    here interrupts it there and waits until it has stopped, as Ctrl-C does in-process."""
    import httpx

    token = None
    end: Optional[dict] = None
    with client(server) as http:
        try:
            with http.stream("POST", "/api/cli/batch", json=body) as stream:
                if stream.status_code >= 400:
                    stream.read()
                    answer(stream)
                for line in stream.iter_lines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind = event.pop("kind")
                    if kind == "accepted":
                        token = event["token"]
                    elif kind in ("result", "error", "interrupted"):
                        end = {"kind": kind, **event}
                    else:
                        progress(event_from(kind, event))
        except KeyboardInterrupt:
            if token is not None:
                try:
                    http.post(f"/api/cli/batch/{token}/stop", json={})
                except httpx.HTTPError:
                    pass
            raise
        except httpx.HTTPError as e:
            raise ReverieError(f"the server for this home at {server.url} did not answer ({type(e).__name__}): "
                               "run with --local, or restart it with `reverie serve`") from None
    if end is None or end["kind"] == "interrupted":
        raise ReverieError("the server stopped the batch before it ended (was it stopped?): everything finished is "
                           "saved; run the same command to continue")
    if end["kind"] == "error":
        raise UnexpectedServerError(end["message"]) if end["unexpected"] else ReverieError(end["message"])
    return end


class RemoteChat:
    """`reverie chat` on the server's sessions: each turn a request there, slash commands answered there."""

    def __init__(self, server: Server, home: Optional[str]):
        self.server, self.home = server, home_of(home)
        self.http = client(server)

    def open(self, session: Optional[str]) -> dict:
        return post(self.http, "/api/cli/chat/open", {"session": session, "home": self.home})

    def command(self, session: str, message: str) -> dict:
        return post(self.http, "/api/cli/chat/command", {"session": session, "message": message, "home": self.home})

    def turn(self, session: str, message: str, options: dict[str, Any], progress: Callable[[Event], None]) -> dict:
        accepted = post(self.http, "/api/cli/chat/turn",
                        {"session": session, "message": message, "options": options, "home": self.home})
        request_id = int(accepted["request_id"])
        try:
            follow(self.http, accepted["events"], progress)
        except KeyboardInterrupt:
            # Ctrl-C stops the turn there between images; what it rendered is kept and shown.
            stop_request(self.server, request_id)
            follow(self.http, accepted["events"], lambda event: None)  # the events again, to the turn's end
        done = answer(self.http.get(f"/api/cli/chat/result/{request_id}"))
        if "turn" not in done:
            raise failed(done)
        return done["turn"]

    def close(self) -> None:
        self.http.close()
