"""The FastAPI app: the token check, bounded bodies, files by content hash, and the two route sets."""

from __future__ import annotations

import base64
import hmac
import re
from pathlib import Path
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from reverie.logs import add_secret, open_log
from reverie.serve.access import AccessLog
from reverie.serve.http import MAX_ROW_ID, BodyError, openai_error
from reverie.serve.service import ServeService

COOKIE = "reverie_token"
PUBLIC = ("/login", "/static/")  # the login page and its stylesheet; nothing from the home
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1", "[::1]"}
SHA = re.compile(r"^[0-9a-f]{64}$")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
# The routes whose bodies are not JSON; every other state-changing route takes application/json only.
BODY_TYPES = {"/login": "application/x-www-form-urlencoded", "/v1/images/edits": "multipart/form-data"}
DEFAULT_PORTS = {"http": 80, "https": 443}
HERE = Path(__file__).parent


def token_ok(request: Request, token: Optional[str]) -> bool:
    if not token:
        return True
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        given = header[7:].strip()
    elif header.lower().startswith("basic "):
        # Open WebUI and SillyTavern speak A1111's HTTP basic auth: any user, the token as password.
        try:
            given = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            given = ""
    else:
        given = request.cookies.get(COOKIE, "")
    return hmac.compare_digest(given.encode(), token.encode())


def media_type(content_type: str) -> str:
    """The media type alone, exactly: `text/plain; x=application/json` is text/plain."""
    return content_type.split(";", 1)[0].strip().lower()


def host_key(netloc: str, scheme: str = "http") -> str:
    """host:port with the scheme's default port dropped, so `http://h` and Host `h:80` compare equal."""
    host, _, port = netloc.strip().lower().rpartition(":") if not netloc.endswith("]") else (netloc.lower(), "", "")
    if not host or not port.isdigit():
        return netloc.strip().lower()
    return host if int(port) == DEFAULT_PORTS.get(scheme) else f"{host}:{port}"


def cross_site(request: Request) -> Optional[str]:
    """Why a state-changing request came from another site, or None. Browsers send Sec-Fetch-Site on
    every request (and cannot forge it); older ones send Origin on a cross-origin POST. Clients that
    are not browsers send neither and are left to the token."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site.lower() not in ("same-origin", "none"):
        return f"Sec-Fetch-Site: {site[:20]}"
    origin = request.headers.get("origin")
    if origin is None:
        return None
    scheme, sep, netloc = origin.partition("://")
    if not sep or origin == "null":
        return "Origin: null"
    # A TLS proxy in front changes the scheme, not the host: compare host and port only.
    if host_key(netloc, scheme.lower()) != host_key(request.headers.get("host", ""), scheme.lower()):
        return f"Origin: {origin[:80]}"
    return None


class Guard:
    """The token check, the same-site rule and the body-type rule, before any route. A plain ASGI middleware: the
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
            if path.startswith(("/v1/", "/api/", "/events/", "/sdapi/", "/mcp")):
                return openai_error(401, "a token is needed: send the header `Authorization: Bearer TOKEN` "
                                    "(the --token or REVERIE_TOKEN the server was started with)",
                                    kind="authentication_error", code="invalid_api_key")
            if path.startswith("/files/"):
                return Response("a token is needed: log in at /login", status_code=401, media_type="text/plain")
            return RedirectResponse("/login", status_code=303)
        if request.method not in SAFE_METHODS:
            why = cross_site(request)
            if why is not None:
                return openai_error(403, f"refused a request from another site ({why}): use reverie's own pages, "
                                    "or a client that is not a browser", kind="permission_error")
            wanted = BODY_TYPES.get(path, "application/json")
            # A request with no body (MCP's session DELETE, A1111's interrupt) has nothing to smuggle.
            empty = not request.headers.get("content-type") and request.headers.get("content-length", "0") == "0" \
                and "transfer-encoding" not in request.headers
            if not empty and media_type(request.headers.get("content-type", "")) != wanted:
                # A form on another site can post text/plain or a form to localhost without asking; it
                # cannot send application/json unless CORS allows it, and this server allows none.
                return openai_error(415, f"send the body with `Content-Type: {wanted}`")
        return None


def create_app(service: ServeService, token: Optional[str] = None) -> FastAPI:
    from reverie.serve import a1111, cli_api, mcp, openai_api, openai_edits, pages

    app = FastAPI(title="reverie", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service, app.state.token = service, token
    add_secret(token)  # the log of this home's server: tracebacks and access lines, never the token
    app.state.log = open_log(service.studio.home, "serve")

    @app.exception_handler(BodyError)
    async def body_error(request: Request, exc: BodyError):
        return openai_error(exc.status, exc.message, param=exc.param)

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where, param = (list(first.get("loc", ())) + ["", ""])[:2]
        if where == "path":  # ids are whole numbers from 0 to 2^63-1, the integers SQLite can hold
            return openai_error(400, f"{param} must be a whole number from 0 to {MAX_ROW_ID}: use an id this "
                                "server gave out", param=str(param))
        return openai_error(400, f"{param}: {first.get('msg', 'not valid')}", param=str(param) or None)

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
    app.add_middleware(AccessLog)
    app.include_router(openai_api.router)
    app.include_router(openai_edits.router)
    app.include_router(pages.router)
    app.include_router(mcp.http_router(service))
    app.include_router(a1111.router)
    app.include_router(cli_api.router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    return app
