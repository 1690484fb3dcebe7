"""Access lines for the server's log: method, path, status and time of every request.

The query string is left out (a client may put a key there) and so are the headers; the logs'
redactor catches what else could look like a credential.
"""

from __future__ import annotations

import time

from reverie.logs import get

log = get("serve.access")


class AccessLog:
    """A plain ASGI middleware, outermost, so refused requests are logged too."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.monotonic()
        status = {"code": 0}

        async def sending(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            client = scope.get("client") or ("-", 0)
            log.info("%s %s %s %s %.0fms", client[0], scope.get("method", "-"), scope.get("path", "-"),
                     status["code"] or "-", (time.monotonic() - start) * 1000)
