"""OpenAI's `POST /v1/images/edits`: multipart `image`, `prompt`, `n`, optional `mask`, as the
`openai` client's `images.edit(...)` sends them. The prompt is the instruction of an edit run
(`Studio.edit`): n candidates per round, scored, the best n back as PNGs.

The uploaded files are written by this process under the home (the names are ours, never the
request's) and kept there as the edit's source, content-addressed, like any other.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from pathlib import Path
from typing import Optional

from fastapi import APIRouter, Request

from reverie.serve.http import openai_error
from reverie.serve.openai_api import MAX_IMAGES, image_item
from reverie.types import ReverieError

router = APIRouter()

MAX_UPLOAD = 32 * 1024 * 1024  # bytes per file: OpenAI's own bound is 25-50 MB
_RUN_LOCK = threading.Lock()  # edits take turns: one Studio, and no queue to recover them from


async def _file(form, name: str) -> Optional[bytes]:
    item = form.get(name)
    if item is None or isinstance(item, str):
        return None
    data = await item.read(MAX_UPLOAD + 1)
    if len(data) > MAX_UPLOAD:
        raise ReverieError(f"{name}: the file is over {MAX_UPLOAD // 2**20} MB: send a smaller image")
    return data


@router.post("/v1/images/edits")
async def edit(request: Request):
    service = request.app.state.service
    try:
        form = await request.form(max_files=4, max_fields=32)
    except Exception as e:  # not multipart, or malformed
        return openai_error(400, f"send multipart/form-data with image and prompt ({str(e).splitlines()[0] if str(e) else type(e).__name__})")
    prompt = form.get("prompt")
    try:
        n = int(form.get("n") or 1)
    except ValueError:
        return openai_error(400, "n: give a whole number from 1 to 10", param="n")
    if not 1 <= n <= MAX_IMAGES:
        return openai_error(400, f"n: give a whole number from 1 to {MAX_IMAGES}", param="n")
    response_format = str(form.get("response_format") or "b64_json")
    if response_format not in ("b64_json", "url"):
        return openai_error(400, "response_format: use b64_json or url", param="response_format")
    if not isinstance(prompt, str) or not prompt.strip():
        return openai_error(400, "prompt: say what to change, e.g. \"make it night\"", param="prompt")
    try:
        image = await _file(form, "image") or await _file(form, "image[]")
        mask = await _file(form, "mask")
    except ReverieError as e:
        return openai_error(400, str(e))
    if image is None:
        return openai_error(400, "image: attach the image to edit (a PNG, JPEG or WebP file)", param="image")

    uploads = service.studio.home / "uploads"
    uploads.mkdir(exist_ok=True)
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"
    paths = {"image": uploads / f"{stem}-image", "mask": uploads / f"{stem}-mask"}
    paths["image"].write_bytes(image)
    if mask is not None:
        paths["mask"].write_bytes(mask)
    stop = threading.Event()

    def work():
        with _RUN_LOCK:
            return service.studio.edit(str(paths["image"]), prompt, n=n, rounds=1,
                                       mask=str(paths["mask"]) if mask is not None else None, stop=stop)

    task = asyncio.ensure_future(asyncio.to_thread(work))
    try:
        while not task.done():
            if await request.is_disconnected():
                stop.set()
                return openai_error(499, "the client closed the connection; the edit was stopped")
            await asyncio.sleep(0.2)
        result = task.result()
    except ReverieError as e:
        return openai_error(400, str(e))
    except Exception as e:
        return openai_error(500, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", kind="server_error")
    finally:
        for p in paths.values():  # the home keeps its own content-addressed copy
            Path(p).unlink(missing_ok=True)
    return {"created": int(time.time()), "data": [image_item(r, response_format, request) for r in result.best[:n]],
            "reverie": {"run_id": result.run_id}}
