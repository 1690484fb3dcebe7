"""The CLI over a warm `reverie serve`: the server's file in the home, and make handed over to it.

When a server runs for the same home, `reverie make` sends the run there and draws its progress
from the server's events: this process imports no torch and loads no model. Nothing here imports
more than httpx; results, exit codes and `--json` are the same as in-process.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from reverie.types import Event, ReverieError

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


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_server(home: Optional[str]) -> Optional[Server]:
    """This home's running server, or None (no file, a dead pid, or a file from another home)."""
    from reverie.config import resolve_home

    path = server_file(resolve_home(home))
    try:
        data = json.loads(path.read_text())
        server = Server(url=str(data["url"]), pid=int(data["pid"]), token=data.get("token"), home=str(data["home"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not alive(server.pid) or Path(server.home) != path.parent.resolve():
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
    """The run failed on the server for a reason nobody caused: exit 1, as in-process."""


def remote_make(server: Server, request: dict[str, Any], progress: Callable[[Event], None],
                on_request: Callable[[int], None] = lambda request_id: None) -> dict:
    """Run a make on the server, feeding its events to progress; `make --json`'s object."""
    import httpx

    with httpx.Client(base_url=server.url, headers=server.headers(), timeout=httpx.Timeout(30, read=None)) as client:
        try:
            accepted = answer(client.post("/api/cli/make", json=request))
        except httpx.HTTPError as e:
            raise ReverieError(f"the server for this home at {server.url} did not answer ({type(e).__name__}): "
                               "run with --local, or restart it with `reverie serve`") from None
        request_id = int(accepted["request_id"])
        on_request(request_id)
        with client.stream("GET", accepted["events"]) as events:
            for line in events.iter_lines():
                if not line.startswith("data: "):
                    continue
                event = json.loads(line[6:])
                kind = event.pop("kind")
                if kind in ("done", "failed", "cancelled"):
                    break
                progress(Event(kind, event))
        body = answer(client.get(f"/api/cli/result/{request_id}"))
    if body["status"] != "done":
        message = body.get("error") or f"the run was {body['status']}"
        if body.get("unexpected"):
            raise UnexpectedServerError(message)
        raise ReverieError(message)
    return {**body["result"], "scorers": body.get("scorers", [])}


def stop_request(server: Server, request_id: int) -> None:
    import httpx

    try:
        httpx.post(f"{server.url}/api/requests/{request_id}/stop", headers=server.headers(), json={}, timeout=10)
    except httpx.HTTPError:
        pass
