"""What the routes share: OpenAI's error shape and JSON bodies read within a bound."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Optional

from fastapi import Path, Request
from fastapi.responses import JSONResponse

MAX_BODY = 64 * 1024  # an idea is at most 4000 characters: a JSON body past this is not a request we serve
MAX_DEPTH = 32  # our bodies are flat objects; json's C decoder recurses per bracket and overflows past ~10,000
MAX_ROW_ID = 2**63 - 1  # SQLite's integer: a larger id would raise OverflowError inside the query

# A row id in a path: out of SQLite's range is refused as a bad request, never handed to a query.
RowId = Annotated[int, Path(ge=0, le=MAX_ROW_ID)]


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
    if nesting(bytes(body)) > MAX_DEPTH:
        raise BodyError(400, f"the body nests deeper than {MAX_DEPTH} levels: send a flat JSON object such as "
                        "{\"prompt\": \"a fox\"}")
    try:
        data = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError):
        raise BodyError(400, "the body is not valid JSON: send a JSON object such as {\"prompt\": \"a fox\"}") from None
    if not isinstance(data, dict):
        raise BodyError(400, "the body must be a JSON object such as {\"prompt\": \"a fox\"}")
    return data


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def nesting(body: bytes) -> int:
    """How deep the brackets of a JSON text go, not counting those inside strings (checked before
    parsing, since the parser itself is what a deep text overflows). Strings go first, in C: an
    img2img body is megabytes of base64 in one string."""
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    depth = deepest = 0
    for byte in brackets:
        if byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def row_id(value: Any) -> Optional[int]:
    """A JSON value as a row id, or None when it is not a whole number SQLite can hold."""
    if isinstance(value, bool):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if 0 <= number <= MAX_ROW_ID else None
