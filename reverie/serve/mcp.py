"""reverie as an MCP server, on the official `mcp` SDK: tools for agents, over stdio (`reverie mcp`)
or streamable HTTP (`reverie serve`, at /mcp, behind the server's token).

Every tool call is a thin door onto the server's Studio (see doors): a make is an accepted request
like an OpenAI one, recorded and resumed the same way, and its images are the run's curated best.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Optional

import anyio
import mcp_types as types
from fastapi import APIRouter
from mcp.server.mcpserver import Context, MCPServer

from reverie.logs import get
from reverie.serve import doors
from reverie.serve.service import Busy, ServeService
from reverie.types import ReverieError

log = get("mcp")
MAX_WAIT = 1800.0

INSTRUCTIONS = """reverie turns a person's short idea into curated images: it writes the prompts itself, renders
several candidates, scores them, revises, and returns the best few with why each was chosen.
Pass the person's own words as the idea ("a fox in the rain", "make the sky stormier"): do not
expand them into a long prompt, reverie's prompt writer does that and records it. Call make, then
result with the run id (result waits and reports progress). Every image has a lineage (show, lineage)
and the person's pick or reject teaches reverie their taste."""

IDEA_HELP = ("The person's idea in their own words, a few words to a sentence, e.g. \"a fox in the rain at "
             "night\". Do NOT rewrite it into a detailed prompt: reverie expands, renders, scores and revises it.")


def text(data: Any) -> types.TextContent:
    return types.TextContent(type="text", text=data if isinstance(data, str) else doors.as_json(data))


def failure(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[text(f"error: {message}")], is_error=True)


def guarded(what: str):
    """Each tool's errors as MCP tool errors with one line; unexpected ones with their traceback logged."""

    def wrap(fn):
        import functools

        @functools.wraps(fn)
        async def tool(*args, **kwargs):
            try:
                return await fn(*args, **kwargs)
            except Busy as e:
                return failure(str(e))
            except ReverieError as e:
                log.info("%s refused: %s", what, e)
                return failure(str(e))
            except Exception as e:  # the server stays up; the log has the rest
                log.exception("%s failed", what)
                return failure(f"{type(e).__name__}: {e} (the traceback is in logs/ in reverie's home)")

        return tool

    return wrap


async def follow(service: ServeService, run_id: str, ctx: Optional[Context], timeout: float) -> bool:
    """Wait for a run to end, sending progress notifications as its images arrive (the last one
    when it has ended); False on timeout."""
    end = time.monotonic() + min(max(timeout, 0.0), MAX_WAIT)
    last = None
    while True:
        done = doors.finished(service, run_id)
        status = doors.progress_of(doors.job_for_run(service, run_id))
        seen = (status.get("rendered"), status.get("latest"))
        if ctx is not None and status and seen != last:
            last = seen
            await ctx.report_progress(float(status["rendered"]), float(status["budget"]) if status.get("budget") else None,
                                      status["latest"])
        if done:
            return True
        if time.monotonic() > end:
            return False
        await asyncio.sleep(0.25)


async def result_content(service: ServeService, run_id: str, k: int, base_url: str) -> types.CallToolResult:
    status = await anyio.to_thread.run_sync(doors.run_status, service, run_id)
    cards = await anyio.to_thread.run_sync(lambda: doors.best_cards(service, run_id, k=k, base_url=base_url))
    content: list[Any] = [text({**status, "best": cards})]
    for card in cards:
        data = await anyio.to_thread.run_sync(doors.thumbnail_png, card["path"])
        import base64

        content.append(types.ImageContent(type="image", data=base64.b64encode(data).decode("ascii"), mime_type="image/png"))
        content.append(text(f"image {card['id']}: score {card['score']:.3f} — {card['why']}" if card["score"] is not None
                            else f"image {card['id']}: {card['why']}"))
    return types.CallToolResult(content=content, structured_content={**status, "best": cards},
                                is_error=status["status"] == "failed")


def build_server(service: ServeService, base_url: str = "") -> MCPServer:
    """The MCP server over one ServeService; base_url makes image URLs absolute (HTTP only)."""
    from reverie.version import __version__

    server = MCPServer(name="reverie", instructions=INSTRUCTIONS, version=__version__, log_level="WARNING")
    store = service.studio.store

    @server.tool(description="Start making images from the person's idea. Returns the run id at once; then call "
                             "`result` with it (it waits and reports progress). " + IDEA_HELP)
    @guarded("make")
    async def make(idea: str, n: int = 4, rounds: int = 2, aspect: str = "1:1", megapixels: float = 1.0,
                   seed: Optional[int] = None, wait: bool = False, ctx: Optional[Context] = None) -> types.CallToolResult:
        """n: images per round (1-10); rounds: most rounds of revision (1-6); aspect W:H; wait: answer with the result."""
        job = await anyio.to_thread.run_sync(lambda: doors.start_make(
            service, idea, n=n, rounds=rounds, aspect=aspect, megapixels=megapixels, seed=seed, origin="mcp"))
        if ctx is not None:
            await ctx.report_progress(0.0, None, f"accepted as request {job.id}; loading the engine")
        run_id = await anyio.to_thread.run_sync(doors.wait_for_run_id, job)
        if run_id is None:
            return failure(job.error or f"the run did not start: request {job.id} is {job.status}")
        if wait:
            await follow(service, run_id, ctx, MAX_WAIT)
            return await result_content(service, run_id, min(n, 4), base_url)
        answer = {"run_id": run_id, "request_id": job.id, "status": "running",
                  "next": f"call result with run_id {run_id!r} to wait for the best images"}
        return types.CallToolResult(content=[text(answer)], structured_content=answer)

    @server.tool(description="Where a run stands: its status, renders so far of its budget, the latest step.")
    @guarded("status")
    async def status(run_id: str) -> types.CallToolResult:
        answer = await anyio.to_thread.run_sync(doors.run_status, service, run_id)
        return types.CallToolResult(content=[text(answer)], structured_content=answer)

    @server.tool(description="The best images of a run as thumbnails, each with its path, URL, score and why it was "
                             "chosen. Waits for a running run (up to timeout_s seconds), reporting progress.")
    @guarded("result")
    async def result(run_id: str, k: int = 4, wait: bool = True, timeout_s: float = 600.0,
                     ctx: Optional[Context] = None) -> types.CallToolResult:
        run = await anyio.to_thread.run_sync(store.get_run, run_id)
        if wait and not await follow(service, run["id"], ctx, timeout_s):
            answer = {**doors.run_status(service, run["id"]), "note": "still running: call result again"}
            return types.CallToolResult(content=[text(answer)], structured_content=answer)
        return await result_content(service, run["id"], max(1, min(int(k), 8)), base_url)

    @server.tool(description="The whole tree of a run: the idea, each prompt the loop wrote and why, every render "
                             "with its seed and scores.")
    @guarded("show")
    async def show(run_id: str) -> types.CallToolResult:
        tree = await anyio.to_thread.run_sync(store.run_tree, run_id)
        return types.CallToolResult(content=[text(tree)])

    @server.tool(description="The lineage of one image (by its id from result): the request, the prompt chain from "
                             "the first expansion, the exact render spec, scores, and what started the run.")
    @guarded("lineage")
    async def lineage(image_id: int) -> types.CallToolResult:
        from reverie.store.lineage import lineage as lineage_of

        row = service.queue.render(int(image_id))
        if row is None:
            raise ReverieError(f"no image {image_id} in this home: use an image id from result")
        info = await anyio.to_thread.run_sync(lineage_of, store, row)
        return types.CallToolResult(content=[text(info)])

    async def choose(image_id: int, choice: str) -> types.CallToolResult:
        if service.queue.render(int(image_id)) is None:
            raise ReverieError(f"no image {image_id} in this home: use an image id from result")
        store.picks.record(int(image_id), choice, source="api")
        answer = {"image_id": int(image_id), "choice": choice,
                  "standing": store.picks.standing([int(image_id)]).get(int(image_id))}
        return types.CallToolResult(content=[text(answer)])

    @server.tool(description="Record that the person likes this image (their words, not your guess): reverie "
                             "learns their taste from picks and rejects.")
    @guarded("pick")
    async def pick(image_id: int) -> types.CallToolResult:
        return await choose(image_id, "pick")

    @server.tool(description="Record that the person does not like this image.")
    @guarded("reject")
    async def reject(image_id: int) -> types.CallToolResult:
        return await choose(image_id, "reject")

    @server.tool(description="Start a batch: many ideas, each in the person's own words, run in the background; "
                             "keeps the best `keep` of `per_prompt` renders each. Returns the batch id at once.")
    @guarded("batch_start")
    async def batch_start(ideas: list[str], per_prompt: int = 4, keep: int = 2) -> types.CallToolResult:
        batch_id = await anyio.to_thread.run_sync(
            lambda: doors.start_batch(service, ideas, per_prompt=per_prompt, keep=keep))
        answer = {"batch_id": batch_id, "status": "running", "next": "call batch_status with the batch id"}
        return types.CallToolResult(content=[text(answer)], structured_content=answer)

    @server.tool(description="Where a batch stands: each idea's status and the images it kept (paths, URLs, scores).")
    @guarded("batch_status")
    async def batch_status(batch_id: str) -> types.CallToolResult:
        answer = await anyio.to_thread.run_sync(lambda: doors.batch_status(service, batch_id, base_url=base_url))
        return types.CallToolResult(content=[text(answer)], structured_content=answer)

    return server


def run_stdio(service: ServeService) -> None:
    """`reverie mcp`: the protocol on stdin/stdout until the client closes it."""
    build_server(service).run("stdio")


class LazyStreamableHTTP:
    """The SDK's streamable-HTTP endpoint inside reverie's app. Its session manager needs a running
    task group; it is started on the first request, in the server's own loop, so the app needs no
    lifespan of its own (tests run uvicorn without one)."""

    def __init__(self, service: ServeService):
        from mcp.server.transport_security import TransportSecuritySettings

        self.server = build_server(service)
        # The Guard in front of every route already refuses foreign Host names without a token;
        # with a token the server may be reached by any name, which the SDK's own check would refuse.
        self.app = self.server.streamable_http_app(
            streamable_http_path="/mcp", transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))
        self.manager = self.server.session_manager
        self.started: Optional[asyncio.Event] = None
        self.task: Optional[asyncio.Task] = None

    async def ensure_started(self) -> None:
        if self.started is None:
            self.started = asyncio.Event()

            async def keep_running():
                async with self.manager.run():
                    self.started.set()
                    await asyncio.Event().wait()  # until the loop ends with the server

            self.task = asyncio.get_running_loop().create_task(keep_running())
        await self.started.wait()

    async def __call__(self, scope, receive, send):
        await self.ensure_started()
        await self.manager.handle_request(scope, receive, send)


def http_router(service: ServeService) -> APIRouter:
    """/mcp for `reverie serve`: the same tools over streamable HTTP, behind the same token rules."""
    from starlette.routing import Route

    router = APIRouter()
    router.routes.append(Route("/mcp", endpoint=LazyStreamableHTTP(service), methods=["GET", "POST", "DELETE"]))
    return router
