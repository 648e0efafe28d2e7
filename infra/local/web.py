"""The local cloud's web server: the customer widget, the agent console and the browser SDK.

Serves the project's ``web/`` directory on its own port, like the S3 bucket
behind CloudFront of ``infra/web.yaml`` serves it on AWS, plus two
development-only routes:

* ``GET /config.json``: where the pages find the REST and WebSocket APIs.
  On AWS, ``python -m infra.web deploy`` writes this file from the
  deployed stage; the pages never hold a URL in code.
* ``POST /dev/token`` ``{"sub": S, "role": R, "name": N}``: a development
  token signed with the stage's ``JWT_SECRET`` (the same one
  ``python -m infra.local token`` prints). It exists only here, only when
  the stage has a secret in ``.chalice/config.json``; on AWS a real
  identity provider takes its place (docs/web.md).

  It keeps the token endpoint contract of docs/web.md, "Tokens": the SDK
  calls it with the page's cookies (``credentials: "include"``), so a
  page on another origin is answered only when that origin is listed in
  the stage's ``EMBED_ORIGINS`` (or ``--embed-origins``): CORS names the
  origin itself with ``Access-Control-Allow-Credentials: true``, never
  ``*``, which browsers refuse with credentials and which is refused
  here as a setting. An origin not listed gets a 403 whose JSON body it
  can read, so the widget says why instead of "Failed to fetch".

Every response carries the Content-Security-Policy the pages are written
for (no inline script, no other origin than the APIs), as CloudFront's
response headers policy of ``infra/web.yaml`` does on AWS.
"""

from __future__ import annotations

import logging
import mimetypes
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from infra.local import tokens

log = logging.getLogger("infra.local.web")

INDEX_PAGES = {"/": "index.html", "/console": "console.html"}
_ORIGIN_RE = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$")
_SUB_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
ROLES = ("customer", "agent")


def origin_of(url: str) -> str:
    """``scheme://host:port`` of a URL (what CSP's ``connect-src`` lists)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def parse_origins(text: str | None, setting: str = "EMBED_ORIGINS") -> tuple[str, ...]:
    """The origins of a comma- or space-separated list, each ``scheme://host[:port]``.

    Raises ValueError, naming the setting, for ``*`` (the token endpoint is
    called with credentials, and a wildcard cannot be combined with them)
    and for anything that is not an origin (a path, a trailing slash, no
    scheme).
    """
    origins: list[str] = []
    for part in re.split(r"[\s,]+", text or ""):
        if not part:
            continue
        if part == "*":
            raise ValueError(f"{setting}: '*' cannot be used: the token endpoint is called with credentials"
                             " (cookies), so each embedding origin must be listed")
        if not _ORIGIN_RE.match(part):
            raise ValueError(f"{setting}: {part!r} is not an origin (scheme://host[:port], no path)")
        if part not in origins:
            origins.append(part)
    return tuple(origins)


def content_security_policy(connect: list[str]) -> str:
    """The pages' policy: scripts and styles only from this origin, sockets only to the APIs."""
    return "; ".join([
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self' " + " ".join(connect),
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ])


class WebServer:
    """The ``web/`` directory, ``/config.json`` and ``/dev/token`` on one port."""

    def __init__(self, root: Path, host: str, port: int, rest_url: str, websocket_url: str,
                 stage: str, jwt_secret: str | None, embed_origins: tuple[str, ...] = ()) -> None:
        self.root = root.resolve()
        self.host = host
        self.port = port
        self.jwt_secret = jwt_secret
        #: Origins besides this server's own whose pages may get development tokens.
        self.embed_origins = embed_origins
        self.config: dict[str, Any] = {
            "restUrl": rest_url,
            "websocketUrl": websocket_url,
            "tokenUrl": "/dev/token" if jwt_secret else None,
            "stage": stage,
            "devSignIn": bool(jwt_secret),
        }
        self.csp = content_security_policy([origin_of(rest_url), origin_of(websocket_url)])
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """Base URL of the pages."""
        return f"http://{self.host}:{self.port}"

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._headers])
        app.router.add_get("/config.json", self._config)
        app.router.add_post("/dev/token", self._token)
        app.router.add_route("OPTIONS", "/dev/token", self._preflight)
        app.router.add_get("/{path:.*}", self._static)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.build_app(), handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port, reuse_address=True).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _headers(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPException as exc:
            response = exc
        response.headers["Content-Security-Policy"] = self.csp
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        # Development: always the files on disk (CloudFront caches on AWS).
        response.headers["Cache-Control"] = "no-cache"
        # The widget may be embedded on another origin: its module, styles and
        # config.json are fetched cross-origin without credentials (as
        # CloudFront allows on AWS). /dev/token answers with its own CORS.
        response.headers.setdefault("Access-Control-Allow-Origin", "*")
        return response

    def origin_allowed(self, origin: str) -> bool:
        """Whether a page of ``origin`` may get a development token: this server's or a listed one."""
        own = {self.url, f"http://localhost:{self.port}"} if self.host in ("127.0.0.1", "localhost") else {self.url}
        return origin in own or origin in self.embed_origins

    @staticmethod
    def _credentialed_cors(request: web.Request) -> dict[str, str]:
        """CORS headers of /dev/token: the caller's origin itself, with credentials (never ``*``)."""
        origin = request.headers.get("Origin")
        if not origin:
            return {}
        return {"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Credentials": "true",
                "Vary": "Origin"}

    async def _config(self, request: web.Request) -> web.Response:
        return web.json_response(self.config)

    async def _preflight(self, request: web.Request) -> web.Response:
        # Every origin's preflight passes, so that a page not listed reads
        # the 403 of the POST (a clear reason) rather than a network error.
        return web.Response(status=204, headers={"Access-Control-Allow-Methods": "POST",
                                                 "Access-Control-Allow-Headers": "Content-Type",
                                                 "Access-Control-Max-Age": "600",
                                                 **self._credentialed_cors(request)})

    async def _token(self, request: web.Request) -> web.Response:
        response = await self._mint(request)
        response.headers.update(self._credentialed_cors(request))
        return response

    async def _mint(self, request: web.Request) -> web.Response:
        origin = request.headers.get("Origin")
        if origin and not self.origin_allowed(origin):
            return web.json_response(
                {"code": "origin_not_allowed",
                 "message": f"origin {origin} may not embed the chat: add it to the stage's EMBED_ORIGINS"
                            " (or --embed-origins)"},
                status=403)
        if not self.jwt_secret:
            return web.json_response({"code": "not_found", "message": "no development sign-in on this stage"},
                                     status=404)
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _bad("body must be a JSON object")
        sub, role, name = body.get("sub"), body.get("role"), body.get("name")
        if not isinstance(sub, str) or not _SUB_RE.match(sub):
            return _bad("sub must be 1 to 64 characters of A-Z a-z 0-9 _ . @ -")
        if role not in ROLES:
            return _bad("role must be customer or agent")
        if name is not None and (not isinstance(name, str) or len(name) > 80):
            return _bad("name must be text of at most 80 characters")
        token = tokens.mint_token(self.jwt_secret, sub=sub, role=role, name=name)
        return web.json_response({"token": token, "expiresIn": tokens.DEFAULT_TTL_S})

    async def _static(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        name = INDEX_PAGES.get(path.rstrip("/") or "/", path.lstrip("/"))
        target = (self.root / name).resolve()
        if not target.is_relative_to(self.root) or not target.is_file():
            raise web.HTTPNotFound(text="not found")
        kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if target.suffix == ".js":
            kind = "text/javascript"  # module scripts need a JavaScript MIME type
        return web.Response(body=target.read_bytes(), content_type=kind,
                            charset="utf-8" if kind.startswith("text/") else None)


def _bad(message: str) -> web.Response:
    return web.json_response({"code": "bad_request", "message": message}, status=400)


def describe(server: WebServer) -> dict[str, str]:
    """The page URLs printed in the ready banner."""
    return {"widget": f"{server.url}/", "console": f"{server.url}/console"}


__all__ = ["WebServer", "content_security_policy", "describe", "origin_of", "parse_origins"]
