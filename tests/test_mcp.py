"""`reverie mcp` and /mcp, driven by the official MCP SDK's own client: make, then result with images."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.serve_helpers import ThreadServer

TOKEN = "mcp-token-5e1f0a9b"


async def make_then_result(session) -> tuple:
    await session.initialize()
    tools = {t.name: t for t in (await session.list_tools()).tools}
    assert {"make", "status", "result", "show", "lineage", "pick", "reject", "batch_start", "batch_status"} <= set(tools)
    assert "own words" in tools["make"].description  # an agent passes the idea, not an expanded prompt
    started = await session.call_tool("make", {"idea": "a fox in the rain", "n": 2, "rounds": 1, "megapixels": 0.02})
    assert not started.is_error, started.content
    run_id = started.structured_content["run_id"]
    progress = []

    async def on_progress(done, total, message):
        progress.append((done, total, message))

    result = await session.call_tool("result", {"run_id": run_id}, progress_callback=on_progress)
    return run_id, result, progress, session


def check_result(run_id: str, result, home: Path) -> dict:
    assert not result.is_error, result.content
    images = [c for c in result.content if c.type == "image"]
    assert len(images) == 2 and all(c.mime_type == "image/png" for c in images)
    thumb = Image.open(io.BytesIO(base64.b64decode(images[0].data)))
    assert thumb.size[0] > 0
    summary = json.loads(result.content[0].text)
    assert summary["run_id"] == run_id and summary["status"] == "done"
    best = summary["best"]
    assert all(Path(card["path"]).is_file() and Path(card["path"]).is_relative_to(home) for card in best)
    assert all(card["url"].endswith(f"/files/{card['sha256']}.png") for card in best)
    assert all("composite score" in card["why"] and "round 1 prompt" in card["why"] for card in best)
    return best[0]


def test_the_sdk_client_over_stdio_makes_then_gets_image_content_back(home):
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    exe = str(Path(sys.executable).with_name("reverie"))
    params = StdioServerParameters(command=exe, args=["mcp", "--engine", "tiny", "--scorer", "heuristic",
                                                      "--home", str(home)], env={**os.environ, "NO_COLOR": "1"})

    async def scenario():
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                run_id, result, progress, _ = await make_then_result(session)
                first = check_result(run_id, result, home)
                picked = await session.call_tool("pick", {"image_id": first["id"]})
                assert not picked.is_error
                missing = await session.call_tool("lineage", {"image_id": 999999})
                assert missing.is_error and "no image 999999" in missing.content[0].text
                return progress

    progress = asyncio.run(scenario())
    assert progress and progress[-1][0] == 2  # renders done, as notifications while result waited
    from reverie.store.db import Store

    store = Store(home)
    assert store.picks.standing([1, 2])  # the pick is recorded like a web or CLI pick


def test_the_same_over_streamable_http_needs_the_token(home):
    import httpx2
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async def scenario(url: str):
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=300) as client:
            async with streamable_http_client(url, http_client=client) as (read, write):
                async with ClientSession(read, write) as session:
                    run_id, result, _, _ = await make_then_result(session)
                    return run_id, result

    async def refused(url: str):
        async with httpx2.AsyncClient(timeout=30) as client:
            answer = await client.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}},
                                       headers={"Accept": "application/json, text/event-stream"})
            return answer.status_code

    with ThreadServer(home, token=TOKEN) as server:
        assert asyncio.run(refused(f"{server.url}/mcp")) in (303, 401)
        run_id, result = asyncio.run(scenario(f"{server.url}/mcp"))
    check_result(run_id, result, home)
