"""What the routes share: OpenAI's error shape and JSON bodies read within a bound."""

from __future__ import annotations

import json
from typing import Any, Optional

from fastapi import Request
from fastapi.responses import JSONResponse

MAX_BODY = 64 * 1024  # an idea is at most 4000 characters: a JSON body past this is not a request we serve


class BodyError(Exception):
    def __init__(self, status: int, message: str, param: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def openai_error(status: int, message: str, kind: str = "invalid_request_error", param: Optional[str] = None,
                 code: Optional[str] = None) -> JSONResponse:
    """OpenAI's error shape, which its clients turn into their own exceptions with this message."""
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


async def read_json(request: Request, limit: int = MAX_BODY) -> dict[str, Any]:
    """The request's JSON object, read at most `limit` bytes (a chunked body is counted as it comes)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BodyError(413, f"the request body is over {limit // 1024} KiB: send a shorter prompt")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyError(413, f"the request body is over {limit // 1024} KiB: send a shorter prompt")
    try:
        data = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError):
        raise BodyError(400, "the body is not valid JSON: send a JSON object such as {\"prompt\": \"a fox\"}") from None
    if not isinstance(data, dict):
        raise BodyError(400, "the body must be a JSON object such as {\"prompt\": \"a fox\"}")
    return data
