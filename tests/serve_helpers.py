"""A real `reverie serve` for tests: uvicorn on a free port, in a thread or in a subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raw_generation(port: int, body: dict, path: str = "/v1/images/generations") -> socket.socket:
    """POST an image request on a bare socket and return it unread: the test decides whether the
    client waits, hangs up, or is there when the server dies."""
    data = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n".encode()
              + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return s


def wait_until(check, timeout: float = 240.0, what: str = "the condition"):
    """Poll until check() is truthy (a run on two shared cores can take a while; no timing is asserted)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


class ThreadServer:
    """uvicorn serving create_app(...) in this process, so a test can look at the Studio too."""

    def __init__(self, home: Path, token: Optional[str] = None, engine: str = "tiny",
                 engine_options: Optional[dict] = None):
        import uvicorn

        from reverie.orchestrator.studio import Studio
        from reverie.serve.app import create_app
        from reverie.serve.service import ServeService

        self.studio = Studio(home=home, engine=engine, engine_options=engine_options, scorer="heuristic")
        self.service = ServeService(self.studio)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(self.service, token=token), host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "ThreadServer":
        self.thread.start()
        wait_until(lambda: self.server.started, timeout=60, what="uvicorn to start")
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.service.close()
        self.studio.close()


@contextmanager
def cli_server(home: Path, port: int, *extra: str, log: Optional[Path] = None) -> Iterator[subprocess.Popen]:
    """`reverie serve` as a user starts it, in its own process (a test can kill -9 it)."""
    exe = Path(sys.executable).with_name("reverie")
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("REVERIE_TOKEN", None)
    out = open(log, "ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen([str(exe), "serve", "--engine", "tiny", "--scorer", "heuristic", "--port", str(port),
                             "--home", str(home), *extra], stdout=out, stderr=out, env=env)
    try:
        def up():
            if proc.poll() is not None:
                raise AssertionError(f"reverie serve exited with {proc.returncode}: "
                                     + (log.read_text() if log else ""))
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=120, what="reverie serve to listen")
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if log:
            out.close()
