"""The console web application: static pages, the JSON API, and the safety around them.

Plain HTTP on a loopback address only (a bearer token must never cross a network in clear; put a
TLS reverse proxy in front to serve it further). Every response carries a strict Content
Security Policy (scripts and styles only from this origin, nothing inline, no framing), and
requests whose Host is not this console's own loopback name are refused (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import uuid
from pathlib import Path
from typing import Any

import msgspec
import structlog
from aiohttp import web

from psvn.broker.auth import TokenAuthority
from psvn.broker.console.handlers import STORE, TOKENS, add_routes
from psvn.broker.console.storage import ConsoleStore
from psvn.core.errors import Code, PsvnError

log = structlog.get_logger("psvn.broker.console")

STATIC = Path(__file__).parent / "static"
PROBLEM = "application/problem+json"
MAX_BODY = 1024 * 1024
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
ALLOWED_HOSTS: web.AppKey[set[str]] = web.AppKey("allowed_hosts", set)
TITLES = {Code.UNAUTHENTICATED: "Sign in required"}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def problem_response(exc: PsvnError, request: web.Request) -> web.Response:
    problem: dict[str, Any] = exc.to_problem(instance=request.path)
    if exc.code in TITLES:
        problem["title"] = TITLES[exc.code]
    headers = {"WWW-Authenticate": 'Bearer realm="psvn-console"'} if exc.code is Code.UNAUTHENTICATED else None
    return web.Response(status=exc.status, content_type=PROBLEM, body=msgspec.json.encode(problem), headers=headers)


@web.middleware
async def problems(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except PsvnError as exc:
        if exc.code in (Code.FORBIDDEN, Code.UNAUTHENTICATED):
            log.info("console request refused", path=request.path, code=exc.code.value, rule=exc.rule)
        return problem_response(exc, request)
    except web.HTTPRequestEntityTooLarge:
        return problem_response(PsvnError(Code.PAYLOAD_TOO_LARGE, f"request body is larger than {MAX_BODY} bytes",
                                          field="body", rule="max-body-bytes"), request)
    except web.HTTPNotFound:
        return problem_response(PsvnError(Code.NOT_FOUND, f"no such page {request.path}", rule="route"), request)
    except web.HTTPMethodNotAllowed as exc:
        return problem_response(PsvnError(Code.BAD_REQUEST, f"method {exc.method} not allowed here",
                                          rule="method"), request)
    except web.HTTPException:
        raise
    except Exception:
        # the traceback goes to the log under an id the 500 carries, so one leads to the other
        request_id = uuid.uuid4().hex
        log.exception("console error; answered 500", request_id=request_id, method=request.method,
                      path=request.path)
        return problem_response(PsvnError(Code.INTERNAL, f"internal error; see the console log for request "
                                          f"{request_id}", rule="internal", extra={"request_id": request_id}),
                                request)


@web.middleware
async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
    """Refuse foreign Host headers; set the security headers on everything."""
    allowed = request.app[ALLOWED_HOSTS]
    if allowed and request.host not in allowed:
        resp: web.StreamResponse = problem_response(PsvnError(
            Code.FORBIDDEN, f"host {request.host!r} is not this console", field="Host", rule="host"), request)
    else:
        resp = await handler(request)
    resp.headers.update(SECURITY_HEADERS)
    if request.path.startswith("/api/"):
        resp.headers["Cache-Control"] = "no-store"
    return resp


async def index(_request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def favicon(_request: web.Request) -> web.Response:
    return web.Response(status=204)


def make_app(store: ConsoleStore, tokens: TokenAuthority) -> web.Application:
    app = web.Application(middlewares=[guard, problems], client_max_size=MAX_BODY)
    app[STORE] = store
    app[TOKENS] = tokens
    app[ALLOWED_HOSTS] = set()
    app.router.add_get("/", index)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_static("/static/", STATIC, show_index=False, follow_symlinks=False)
    add_routes(app)
    return app


class ConsoleServer:
    """The console on a loopback port; ``url`` once started."""

    def __init__(self, store: ConsoleStore, tokens: TokenAuthority, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        if not is_loopback(host):
            raise PsvnError(Code.CONFIG_INVALID, f"the console serves plain HTTP and listens on loopback only, "
                            f"not {host!r}; put a TLS reverse proxy in front to serve it further",
                            field="host", rule="console-loopback")
        self.store = store
        self.tokens = tokens
        self.host = host
        self.port = port
        self.app = make_app(store, tokens)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> ConsoleServer:
        self._runner = web.AppRunner(self.app)  # the default access log has no headers: no tokens
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        names = {self.host, "localhost", "127.0.0.1", "[::1]"}
        self.app[ALLOWED_HOSTS].update(f"{n}:{self.port}" for n in names)
        log.info("console listening", url=self.url)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self.store.close()
