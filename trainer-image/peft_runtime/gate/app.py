"""The gate's aiohttp application: every request passes the route policy, then goes to the engine.

Checks are aiohttp middlewares run in order before the forward; a per-client check (API keys naming the
adapters a client may call) slots in after `route_policy`, reading the request before it is forwarded."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .proxy import EngineProxy, EngineUnreachable
from .routes import refusal

PROXY = web.AppKey("proxy", EngineProxy)
MAX_REQUEST_BYTES = 32 * 2**20  # a long chat history; aiohttp's default of 1 MiB is too small for one
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_body(status: int, type_: str, reason: str, message: str) -> dict[str, Any]:
    """OpenAI's error shape as vLLM and the built-in engine send it, with our CamelCase reason."""
    return {"error": {"message": message, "type": type_, "param": None, "code": status, "reason": reason}}


@web.middleware
async def route_policy(request: web.Request, handler: Handler) -> web.StreamResponse:
    refused = refusal(request.method, request.path)
    if refused is not None:
        body = error_body(refused.status, refused.type, refused.reason, refused.message)
        return web.json_response(body, status=refused.status)
    return await handler(request)


async def forward(request: web.Request) -> web.StreamResponse:
    try:
        return await request.app[PROXY].forward(request, request.path)
    except EngineUnreachable as error:
        return web.json_response(error_body(502, "BadGatewayError", "EngineUnavailable", str(error)), status=502)


def create_app(engine_url: str) -> web.Application:
    app = web.Application(middlewares=[route_policy], client_max_size=MAX_REQUEST_BYTES)
    proxy = app[PROXY] = EngineProxy(engine_url)
    app.router.add_route("*", "/{path:.*}", forward)

    async def start_proxy(_: web.Application) -> None:
        await proxy.start()

    async def close_proxy(_: web.Application) -> None:
        await proxy.close()

    app.on_startup.append(start_proxy)
    app.on_cleanup.append(close_proxy)
    return app
