"""`reverie serve`: the OpenAI-compatible image endpoint and the web studio, over one warm engine."""

from __future__ import annotations

import ipaddress
import os
import sys
from typing import List, Optional

import typer

from reverie.cli.common import (BATCH_SIZE, COMFY_FILE, COMFY_URL, CONFIG, CPU_OFFLOAD, DEVICE, DTYPE, ENGINE, HOME,
                                LLM_MODEL, LLM_PATH, LLM_TIMEOUT, LLM_URL, MODEL_PATH, PROFILE, SCORER, err,
                                friendly, open_studio, say)
from reverie.types import ReverieError

STOP_WAIT_S = 1.0  # how long a stopping server waits for its runs to reach their next step


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


def port_free(host: str, port: int, home: Optional[str] = None) -> None:
    """A port in use is one line naming it and the fix, before the engine and uvicorn start."""
    import errno
    import socket

    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a port in TIME_WAIT is free
        try:
            s.bind((host.strip("[]"), port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                from reverie.cli.remote import find_server

                ours = find_server(home)
                if ours is not None and ours.url.rstrip("/").endswith(f":{port}"):
                    raise ReverieError(f"port {port} on {host} is in use by `reverie serve` for this home (pid {ours.pid}): "
                                       f"`reverie serve --stop` stops it, or pass --port {port + 1}") from None
                raise ReverieError(f"port {port} on {host} is in use (another `reverie serve`, or another program): "
                                   f"pass --port {port + 1}, or stop what holds it") from None
            raise ReverieError(f"cannot listen on {host}:{port} ({e.strerror}): pass another --host or --port") from None


@friendly
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; any but loopback needs --token."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port to listen on."),
    token: Optional[str] = typer.Option(None, "--token", help="Every route and page needs it (default $REVERIE_TOKEN)."),
    profile: str = PROFILE,
    engine: str = ENGINE,
    scorer: str = SCORER,
    home: Optional[str] = HOME,
    model_path: Optional[str] = MODEL_PATH,
    llm_url: Optional[str] = LLM_URL,
    llm_model: Optional[str] = LLM_MODEL,
    llm_timeout: Optional[float] = LLM_TIMEOUT,
    llm_path: Optional[str] = LLM_PATH,
    config: Optional[str] = CONFIG,
    comfy_url: Optional[List[str]] = COMFY_URL,
    comfy_file: Optional[List[str]] = COMFY_FILE,
    device: Optional[str] = DEVICE,
    dtype: Optional[str] = DTYPE,
    batch_size: Optional[int] = BATCH_SIZE,
    cpu_offload: bool = CPU_OFFLOAD,
    detach: bool = typer.Option(False, "--detach", help="Start in the background and return once it listens."),
    stop: bool = typer.Option(False, "--stop", help="Stop the server running for this home."),
    status: bool = typer.Option(False, "--status", help="Say whether a server runs for this home, and where."),
    keep_alive: Optional[float] = typer.Option(None, "--keep-alive", min=1, metavar="SECONDS",
                                               help="Free the model's memory after this long without a request."),
):
    """Serve images to OpenAI clients (POST /v1/images/generations) and the web studio at /.

    Also the A1111 API (/sdapi/v1/...), MCP (/mcp), and `reverie make` from this home hands its runs here."""
    if stop or status:
        return stop_or_status(home, stop=stop)
    if detach:
        return start_detached(home, port)
    token = token or os.environ.get("REVERIE_TOKEN") or None
    if not is_loopback(host) and not token:
        raise ReverieError(f"refusing to serve on {host} without a token: anyone who can reach it could use your "
                           "machine; pass --token SECRET (or set REVERIE_TOKEN), or bind 127.0.0.1")
    if token is not None and len(token) < 8:
        raise ReverieError("the token is shorter than 8 characters: use a longer secret, e.g. `openssl rand -hex 16`")
    port_free(host, port, home)
    # Bad engine flags are one line from open_studio, before uvicorn and the app are imported.
    studio = open_studio(home=home, engine=engine, profile=profile, scorer=scorer, model_path=model_path, llm_url=llm_url,
                         llm_model=llm_model, llm_timeout=llm_timeout, llm_path=llm_path, config=config,
                         comfy_url=comfy_url, comfy_file=comfy_file, device=device, dtype=dtype, batch_size=batch_size,
                         cpu_offload=cpu_offload, check_weights=True,
                         progress=lambda e: say(err, "reverie:", e.data["message"]) if e.kind == "notice" else None)
    import uvicorn

    from reverie.serve.app import create_app
    from reverie.serve.service import ServeService

    from reverie.cli.remote import remove_server_file, write_server_file
    from reverie.interrupts import interrupted_code
    from reverie.logs import get, log_file
    from reverie.serve.access import echo_to_console

    service = ServeService(studio)
    stopped_by, server = 0, None
    keeper = None
    if keep_alive is not None:
        from reverie.serve.keepalive import KeepAlive

        keeper = KeepAlive(service, keep_alive).start()
    try:
        resumed = service.recover()
        if resumed:
            say(err, "reverie:", f"finishing {len(resumed)} request(s) an earlier server accepted")
        shown = f"[{host}]" if ":" in host else host
        say(err, "reverie:", f"serving {studio.home} on http://{shown}:{port}/ (OpenAI base URL http://{shown}:{port}/v1"
                             f"{', token required' if token else ''}; log {log_file(studio.home, 'serve')})")
        get("serve").info("serving %s on %s:%s", studio.home, host, port)
        app = create_app(service, token=token)
        echo_to_console(sys.stderr)
        if port:  # `reverie make` on this home finds the server here
            write_server_file(studio.home, host=host, port=port, token=token)

        class Server(uvicorn.Server):
            def handle_exit(self, sig, frame):
                # Ctrl-C or SIGTERM: the runs stop at their next step now, not after uvicorn's wait for
                # open responses (an SSE stream ends with its run); their requests stay open.
                service.begin_stop()
                super().handle_exit(sig, frame)

        server = Server(uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=1))
        try:
            server.run()
        except KeyboardInterrupt:  # uvicorn hands the signal back once it has stopped: said below, in one line
            stopped_by = interrupted_code()
        if not server.started:  # another program took the port after port_free looked
            raise ReverieError(f"cannot listen on {host}:{port} (uvicorn's reason is above): pass another --port")
    finally:
        remove_server_file(studio.home)
        if keeper is not None:
            keeper.close()
        left = service.close(wait=STOP_WAIT_S)
        if server is not None and server.started:
            say(err, "reverie:", f"stopped; {left} accepted request(s) left for the next `reverie serve` on this home "
                                 "to finish" if left else "stopped; nothing left to finish")
        studio.close()
    if stopped_by:
        raise typer.Exit(stopped_by)


def stop_or_status(home: Optional[str], stop: bool) -> None:
    from reverie.cli.remote import find_server
    from reverie.config import resolve_home

    where = resolve_home(home)
    server = find_server(home)
    if server is None:
        say(err, "reverie:", f"no server runs for {where}")
        raise typer.Exit(1)
    if not stop:
        import httpx

        try:
            info = httpx.get(f"{server.url}/api/cli/status", headers=server.headers(), timeout=10).json()
            running = f", {info['running']} request(s) running, profile {info['profile']}"
        except (httpx.HTTPError, ValueError, KeyError):
            running = ", not answering"
        print(f"serving {where} at {server.url} (pid {server.pid}{running})")
        return
    import signal
    import time

    # SIGINT, as Ctrl-C: uvicorn re-raises the signal it caught once it has stopped, and only an
    # interrupt lets the server's own cleanup run (runs stop between images, stay accepted for the next start).
    os.kill(server.pid, signal.SIGINT)
    end = time.monotonic() + 60
    while time.monotonic() < end and find_server(home) is not None:
        time.sleep(0.2)
    if find_server(home) is not None:
        raise ReverieError(f"the server (pid {server.pid}) is still stopping: wait, or end it with `kill {server.pid}`")
    say(err, "reverie:", f"stopped the server for {where} (pid {server.pid})")


def start_detached(home: Optional[str], port: int) -> None:
    """`reverie serve --detach`: the same command without --detach, in its own session, its output
    in <home>/logs/serve.out; back once it answers."""
    import subprocess
    import sys
    import time

    from reverie.cli.remote import find_server
    from reverie.config import resolve_home

    where = resolve_home(home)
    running = find_server(home)
    if running is not None:
        raise ReverieError(f"a server already runs for {where} at {running.url} (pid {running.pid}): "
                           "`reverie serve --stop` stops it")
    if not port:
        raise ReverieError("--detach needs a fixed --port (0 picks one nobody could find)")
    args = [a for a in sys.argv[1:] if a != "--detach"]
    (where / "logs").mkdir(parents=True, exist_ok=True)
    log = where / "logs" / "serve.out"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "reverie", *args], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=out, start_new_session=True)
    end = time.monotonic() + 300
    while time.monotonic() < end:
        server = find_server(home)
        if server is not None and server.pid == proc.pid and answers(server):
            say(err, "reverie:", f"serving {where} at {server.url} in the background (pid {proc.pid}; "
                                 f"output in {log}); `reverie serve --stop` stops it")
            return
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            raise ReverieError(f"the server exited at once: {tail[0]} (all of it is in {log})")
        time.sleep(0.2)
    raise ReverieError(f"the server (pid {proc.pid}) did not answer within 5 minutes: see {log}")


def answers(server) -> bool:
    import httpx

    try:
        return httpx.get(f"{server.url}/healthz", headers=server.headers(), timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
