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


# Polls and assets: the web studio asks for its queue every second and a page loads dozens of
# images; on the console they would drown the requests a person wants to see (the log keeps them).
QUIET_PATHS = ("/healthz", "/api/queue", "/static/", "/files/", "/favicon.ico")


class _Audible:
    def filter(self, record) -> bool:
        path = record.args[2] if isinstance(record.args, tuple) and len(record.args) > 2 else ""
        return not any(str(path) == q or (q.endswith("/") and str(path).startswith(q)) for q in QUIET_PATHS)


def echo_to_console(stream) -> None:
    """One line per request on the server's console too (polls and assets left out), redacted as
    the log is: `16:20:01 127.0.0.1 POST /v1/images/generations 200 5130ms`."""
    import logging

    from reverie.logs import RedactingFormatter

    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    handler.addFilter(_Audible())
    log.addHandler(handler)
