"""The FastAPI app: the token check, bounded bodies, files by content hash, and the two route sets."""

from __future__ import annotations

import hmac
import re
from pathlib import Path
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from reverie.serve.http import BodyError, openai_error
from reverie.serve.service import ServeService

COOKIE = "reverie_token"
PUBLIC = ("/login", "/static/")  # the login page and its stylesheet; nothing from the home
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1", "[::1]"}
SHA = re.compile(r"^[0-9a-f]{64}$")
HERE = Path(__file__).parent


def token_ok(request: Request, token: Optional[str]) -> bool:
    if not token:
        return True
    header = request.headers.get("authorization", "")
    given = header[7:].strip() if header.lower().startswith("bearer ") else request.cookies.get(COOKIE, "")
    return hmac.compare_digest(given.encode(), token.encode())


class Guard:
    """The token check and the JSON-only rule, before any route. A plain ASGI middleware: the
    routes' `request.is_disconnected()` sees the client hang up (a wrapping http middleware hides it)."""

    def __init__(self, app, token: Optional[str]):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        refusal = self.refusal(request)
        if refusal is not None:
            return await refusal(scope, receive, send)
        return await self.app(scope, receive, send)

    def refusal(self, request: Request) -> Optional[Response]:
        path = request.url.path
        if not self.token and request.url.hostname not in LOOPBACK_NAMES:
            # Without a token the server is bound to loopback: a Host of another name is a web page
            # that rebound its DNS name to 127.0.0.1 to reach it.
            return openai_error(403, "without a token this server answers only to 127.0.0.1 or localhost: "
                                "open http://127.0.0.1:PORT/, or start it with --token", kind="permission_error")
        public = any(path == p or (p.endswith("/") and path.startswith(p)) for p in PUBLIC)
        if not public and not token_ok(request, self.token):
            if path.startswith(("/v1/", "/api/", "/events/")):
                return openai_error(401, "a token is needed: send the header `Authorization: Bearer TOKEN` "
                                    "(the --token or REVERIE_TOKEN the server was started with)",
                                    kind="authentication_error", code="invalid_api_key")
            if path.startswith("/files/"):
                return Response("a token is needed: log in at /login", status_code=401, media_type="text/plain")
            return RedirectResponse("/login", status_code=303)
        if request.method == "POST" and path != "/login" and \
                "application/json" not in request.headers.get("content-type", ""):
            # A form on another site can post to localhost; it cannot send JSON without CORS allowing it.
            return openai_error(415, "send the body as JSON with `Content-Type: application/json`")
        return None


def create_app(service: ServeService, token: Optional[str] = None) -> FastAPI:
    from reverie.serve import openai_api, pages

    app = FastAPI(title="reverie", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service, app.state.token = service, token

    @app.exception_handler(BodyError)
    async def body_error(request: Request, exc: BodyError):
        return openai_error(exc.status, exc.message, param=exc.param)

    @app.get("/files/{name}")
    def file_by_hash(name: str, download: int = 0):
        """An image of this home's store, named only by its content hash."""
        sha = name[:-4] if name.endswith(".png") else name
        if not SHA.match(sha):
            return Response("images are named by their sha256: /files/<64 hex>.png", status_code=404,
                            media_type="text/plain")
        store = service.studio.store
        row = service.queue.render_by_sha(sha)
        images = store.images_dir.resolve()
        path = (store.home / row["path"]).resolve() if row and row["path"] else None
        if path is None or not path.is_relative_to(images) or not path.is_file():
            return Response("no such image in this home", status_code=404, media_type="text/plain")
        # The PNG itself carries its recipe (reverie and A1111 text chunks): the download is the file.
        headers = {"Content-Disposition": f'attachment; filename="reverie-{row["id"]}-{sha[:12]}.png"'} if download else {}
        return FileResponse(path, media_type="image/png", headers=headers)

    app.add_middleware(Guard, token=token)
    app.include_router(openai_api.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    return app
