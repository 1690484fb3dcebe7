"""`reverie serve`: the OpenAI-compatible image endpoint and the web studio, over one warm engine."""

from __future__ import annotations

import ipaddress
import os
from typing import List, Optional

import typer

from reverie.cli.common import (BATCH_SIZE, COMFY_FILE, COMFY_URL, CONFIG, CPU_OFFLOAD, DEVICE, DTYPE, ENGINE, HOME,
                                LLM_MODEL, LLM_PATH, LLM_TIMEOUT, LLM_URL, MODEL_PATH, PROFILE, SCORER, err,
                                friendly, open_studio, say)
from reverie.types import ReverieError


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


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
):
    """Serve images to OpenAI clients (POST /v1/images/generations) and the web studio at /."""
    token = token or os.environ.get("REVERIE_TOKEN") or None
    if not is_loopback(host) and not token:
        raise ReverieError(f"refusing to serve on {host} without a token: anyone who can reach it could use your "
                           "machine; pass --token SECRET (or set REVERIE_TOKEN), or bind 127.0.0.1")
    if token is not None and len(token) < 8:
        raise ReverieError("the token is shorter than 8 characters: use a longer secret, e.g. `openssl rand -hex 16`")
    # Bad engine flags are one line from open_studio, before uvicorn and the app are imported.
    studio = open_studio(home=home, engine=engine, profile=profile, scorer=scorer, model_path=model_path, llm_url=llm_url,
                         llm_model=llm_model, llm_timeout=llm_timeout, llm_path=llm_path, config=config,
                         comfy_url=comfy_url, comfy_file=comfy_file, device=device, dtype=dtype, batch_size=batch_size,
                         cpu_offload=cpu_offload,
                         progress=lambda e: say(err, "reverie:", e.data["message"]) if e.kind == "notice" else None)
    import uvicorn

    from reverie.serve.app import create_app
    from reverie.serve.service import ServeService

    from reverie.logs import get, log_file

    service = ServeService(studio)
    try:
        resumed = service.recover()
        if resumed:
            say(err, "reverie:", f"finishing {len(resumed)} request(s) an earlier server accepted")
        shown = f"[{host}]" if ":" in host else host
        say(err, "reverie:", f"serving {studio.home} on http://{shown}:{port}/ (OpenAI base URL http://{shown}:{port}/v1"
                             f"{', token required' if token else ''}; log {log_file(studio.home, 'serve')})")
        get("serve").info("serving %s on %s:%s", studio.home, host, port)
        # Ctrl-C stops the runs between images after a short wait for open responses; their requests
        # stay open and the next `reverie serve` on this home finishes them.
        uvicorn.run(create_app(service, token=token), host=host, port=port, log_level="warning",
                    timeout_graceful_shutdown=5)
    finally:
        service.close()
        left = len(service.queue.open_requests())
        if left:
            say(err, "reverie:", f"stopped; {left} accepted request(s) finish when `reverie serve` starts again on this home")
        studio.close()
