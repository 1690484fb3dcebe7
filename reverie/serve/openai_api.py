"""The OpenAI-compatible routes: `GET /v1/models` and `POST /v1/images/generations`.

An image request is an idea for the agent loop: the prompt is expanded, rendered, scored and
(with quality "hd") revised by the critic until the target or the budget, and the best n images
come back, each with the prompt it was rendered from as `revised_prompt`.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from typing import Any, Literal, Optional

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reverie.profiles import PROFILES, get_profile
from reverie.render.resolution import MAX_MEGAPIXELS, MIN_MEGAPIXELS
from reverie.serve.http import openai_error, read_json
from reverie.serve.service import Busy
from reverie.types import ReverieError

router = APIRouter()

MAX_IMAGES = 10  # OpenAI's own bound on n
STANDARD_ROUNDS = 1
HD_ROUNDS = 3
HD_TARGET = 0.7
DEFAULT_MODEL = "reverie"
SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX×]\s*(\d{1,5})\s*$")
# gpt-image names map onto the two we have: one round, or the full loop.
QUALITY = {"standard": "standard", "auto": "standard", "low": "standard", "medium": "standard",
           "hd": "hd", "high": "hd"}


class ImageRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1, max_length=4000)
    model: Optional[str] = None
    n: int = Field(default=1, ge=1, le=MAX_IMAGES)
    size: Optional[str] = None
    response_format: Literal["b64_json", "url"] = "b64_json"
    quality: Optional[str] = None
    user: Optional[str] = Field(default=None, max_length=256)
    # reverie's own, through the client's extra_body: finish even if the client hangs up; a fixed seed.
    keep: bool = False
    seed: Optional[int] = Field(default=None, ge=0, le=2**62)


def models(default_profile: str) -> list[dict[str, Any]]:
    listed = [{"id": DEFAULT_MODEL, "object": "model", "created": 0, "owned_by": "reverie",
               "description": f"the agent loop on {default_profile}"}]
    listed += [{"id": name, "object": "model", "created": 0, "owned_by": "reverie"} for name in PROFILES]
    return listed


def size_to_shape(size: Optional[str]) -> tuple[str, float]:
    """'1024x768' -> aspect '1024:768' and its megapixels; the profile's multiple and cap snap it later."""
    if size is None or size.strip().lower() == "auto":
        return "1:1", 1.0
    m = SIZE.match(size)
    if not m or int(m.group(1)) == 0 or int(m.group(2)) == 0:
        raise ReverieError(f"size {size!r} is not WIDTHxHEIGHT: send e.g. \"1024x1024\" or \"832x1216\"")
    w, h = int(m.group(1)), int(m.group(2))
    megapixels = min(MAX_MEGAPIXELS, max(MIN_MEGAPIXELS, w * h / (1024 * 1024)))
    return f"{w}:{h}", round(megapixels, 4)


def payload_for(body: ImageRequest, default_profile: str) -> dict[str, Any]:
    """The stored request: everything a restarted server needs to ask for the same run again."""
    from reverie.orchestrator.requests import validate_request
    from reverie.render.resolution import parse_aspect
    from reverie.types import Request as RunRequest

    model = body.model or DEFAULT_MODEL
    if model != DEFAULT_MODEL and model not in PROFILES:
        raise ReverieError(f"unknown model {model!r}: use {DEFAULT_MODEL} or a profile from GET /v1/models "
                           f"({', '.join(PROFILES)})")
    quality = QUALITY.get((body.quality or "standard").lower())
    if quality is None:
        raise ReverieError(f"unknown quality {body.quality!r}: use standard (one round) or hd (the full loop with the critic)")
    aspect, megapixels = size_to_shape(body.size)
    parse_aspect(aspect)
    hd = quality == "hd"
    payload = {"prompt": body.prompt, "n": body.n, "rounds": HD_ROUNDS if hd else STANDARD_ROUNDS,
               "target": HD_TARGET if hd else None, "aspect": aspect, "megapixels": megapixels,
               "profile": default_profile if model == DEFAULT_MODEL else model, "seed": body.seed,
               "quality": quality, "user": body.user}
    # The same checks as `reverie make`, now, so a bad request is refused before it is accepted.
    validate_request(RunRequest(idea=body.prompt, n=body.n, rounds=payload["rounds"], target=payload["target"],
                                aspect=aspect, megapixels=megapixels, profile=payload["profile"], seed=body.seed))
    return payload


@router.get("/v1/models")
def list_models(request: Request):
    service = request.app.state.service
    return {"object": "list", "data": models(service.studio.profile_name)}


@router.post("/v1/images/generations")
async def generate(request: Request):
    service = request.app.state.service
    data = await read_json(request)
    try:
        body = ImageRequest.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(p) for p in first.get("loc", ())) or None
        return openai_error(400, f"{param}: {first.get('msg')}" if param else str(first.get("msg")), param=param)
    keep = body.keep or request.headers.get("x-reverie-keep", "").lower() in ("1", "true", "yes")
    model = body.model or DEFAULT_MODEL
    if model != DEFAULT_MODEL and model not in PROFILES:  # as OpenAI answers a model it does not have
        return openai_error(404, f"the model {model!r} does not exist: use {DEFAULT_MODEL} or a profile from "
                            f"GET /v1/models ({', '.join(PROFILES)})", param="model", code="model_not_found")
    try:
        payload = payload_for(body, service.studio.profile_name)
    except ReverieError as e:
        return openai_error(400, str(e))
    try:
        # A listed model whose weights are not here can never run: the client must not retry it.
        await asyncio.to_thread(service.studio.check_weights, get_profile(payload["profile"]))
    except ReverieError as e:
        return openai_error(400, f"the model {model!r} cannot run on this server: {e}", param="model",
                            code="model_not_available")
    try:
        job = service.submit("images", payload, keep=keep)
    except Busy as e:
        return openai_error(429, str(e), kind="rate_limit_error")
    except ReverieError as e:
        return openai_error(400, str(e))
    # The run goes on its own thread; this waits, and a client that hangs up cancels it at the
    # next image unless it asked to keep it (the images then wait in the gallery).
    stays_accepted = openai_error(503, f"the server is shutting down; request {job.id} stays accepted and finishes "
                                       f"when it starts again (GET /api/requests/{job.id})", kind="server_error")
    try:
        while not job.done.is_set():
            if service.shutdown.is_set():  # answered now: uvicorn's stop would otherwise wait for this response
                return stays_accepted
            if not keep and await request.is_disconnected():
                job.stop.set()
                return openai_error(499, "the client closed the connection; the run was stopped")
            await asyncio.sleep(0.2)
    except asyncio.CancelledError:  # the server is shutting down: the request stays accepted
        return stays_accepted
    if job.status != "done" and service.shutdown.is_set():  # its run stopped for the shutdown before we looked
        return stays_accepted
    if job.status != "done":
        return openai_error(500 if job.status == "failed" else 499, job.error or f"the run was {job.status}",
                            kind="server_error")
    return {"created": int(time.time()), "data": [image_item(r, body.response_format, request) for r in job.best],
            "reverie": {"run_id": job.run_id, "request_id": job.id}}


def image_item(render, response_format: str, request: Request) -> dict[str, Any]:
    item: dict[str, Any] = {"revised_prompt": render.prompt}
    if response_format == "url":
        item["url"] = str(request.base_url).rstrip("/") + f"/files/{render.sha256}.png"
    else:
        with open(render.path, "rb") as f:
            item["b64_json"] = base64.b64encode(f.read()).decode("ascii")
    return item
