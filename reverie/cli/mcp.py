"""`reverie mcp`: reverie's tools for LLM agents over stdio (desktop assistants, coding agents)."""

from __future__ import annotations

from typing import List, Optional

from reverie.cli.common import (BATCH_SIZE, COMFY_FILE, COMFY_URL, CONFIG, CPU_OFFLOAD, DEVICE, DTYPE, ENGINE, HOME,
                                LLM_MODEL, LLM_PATH, LLM_TIMEOUT, LLM_URL, MODEL_PATH, PROFILE, SCORER, err,
                                friendly, open_studio, say)


@friendly
def mcp(
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
    """Serve reverie's tools to an MCP client over stdio (make, result, show, pick, batch...)."""
    # stdout is the protocol: everything for people goes to stderr (the client shows or logs it).
    studio = open_studio(home=home, engine=engine, profile=profile, scorer=scorer, model_path=model_path, llm_url=llm_url,
                         llm_model=llm_model, llm_timeout=llm_timeout, llm_path=llm_path, config=config,
                         comfy_url=comfy_url, comfy_file=comfy_file, device=device, dtype=dtype, batch_size=batch_size,
                         cpu_offload=cpu_offload,
                         progress=lambda e: say(err, "reverie:", e.data["message"]) if e.kind == "notice" else None)
    from reverie.logs import get, open_log
    from reverie.serve.mcp import run_stdio
    from reverie.serve.service import ServeService

    where = open_log(studio.home, "mcp")
    service = ServeService(studio)
    say(err, "reverie:", f"MCP over stdio for {studio.home} (log {where})")
    get("mcp").info("mcp over stdio for %s", studio.home)
    try:
        run_stdio(service)
    finally:
        service.close()
        studio.close()
