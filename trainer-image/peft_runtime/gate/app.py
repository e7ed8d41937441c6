"""The gate's aiohttp application: every request passes the route policy, then goes to the engine.

Checks are aiohttp middlewares run in order before the forward: `route_policy`, then, with a keyring
(access.apiKeys: Required), `access_policy`: the client's API key must grant the model it calls."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from .access import NO_KEYRING, Denial, KeyringFile, bearer_key, not_granted
from .proxy import EngineProxy, EngineUnreachable
from .routes import MODEL_CARD, refusal

PROXY = web.AppKey("proxy", EngineProxy)
KEYRING = web.AppKey("keyring", KeyringFile)
GENERATION_ROUTES = frozenset({"/v1/completions", "/v1/chat/completions"})
MODEL_LIST = "/v1/models"
MODEL_REQUIRED = Denial(
    400,
    "BadRequestError",
    "ModelRequired",
    "API keys are granted per model: send a JSON object body whose `model` names the model you call",
)
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


def _denied(denial: Denial) -> web.Response:
    return web.json_response(
        error_body(denial.status, denial.type, denial.reason, denial.message), status=denial.status
    )


async def _requested_model(request: web.Request) -> str | None:
    """The JSON body's `model` (aiohttp keeps the bytes read here for the forward)."""
    try:
        body = json.loads(await request.read())
    except ValueError:
        return None
    model = body.get("model") if isinstance(body, dict) else None
    return model if isinstance(model, str) else None


async def _granted_models(request: web.Request, granted: frozenset[str]) -> web.Response:
    """GET /v1/models with only the cards of the models this key may call."""
    status, body = await request.app[PROXY].get_json(MODEL_LIST)
    if status == 200 and isinstance(body, dict) and isinstance(body.get("data"), list):
        body["data"] = [card for card in body["data"] if isinstance(card, dict) and card.get("id") in granted]
    return web.json_response(body, status=status)


@web.middleware
async def access_policy(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    if path not in GENERATION_ROUTES and path != MODEL_LIST and not path.startswith(MODEL_CARD):
        return await handler(request)  # /health (the readiness probe) and /metrics
    grants = request.app[KEYRING].grants()
    if grants is None:
        return _denied(NO_KEYRING)
    granted = grants.models(bearer_key(request.headers.get("Authorization")))
    if isinstance(granted, Denial):
        return _denied(granted)
    if path == MODEL_LIST:
        return await _relaying_failures(lambda: _granted_models(request, granted))
    model = path.removeprefix(MODEL_CARD) if path.startswith(MODEL_CARD) else await _requested_model(request)
    if model is None:
        return _denied(MODEL_REQUIRED)
    if model not in granted:
        return _denied(not_granted(model, granted))
    return await handler(request)


async def _relaying_failures(call: Callable[[], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """An engine that does not answer is a 502 in OpenAI's error shape (the pod is then not ready)."""
    try:
        return await call()
    except EngineUnreachable as error:
        return web.json_response(error_body(502, "BadGatewayError", "EngineUnavailable", str(error)), status=502)


async def forward(request: web.Request) -> web.StreamResponse:
    return await _relaying_failures(lambda: request.app[PROXY].forward(request, request.path))


def create_app(engine_url: str, keyring: Path | None = None) -> web.Application:
    """`keyring`: the file of API key digests (access.apiKeys: Required); None lets every client through."""
    middlewares = [route_policy] if keyring is None else [route_policy, access_policy]
    app = web.Application(middlewares=middlewares, client_max_size=MAX_REQUEST_BYTES)
    # With keys, a client's Authorization header is its key: the engine never sees it.
    proxy = app[PROXY] = EngineProxy(engine_url, frozenset({"authorization"}) if keyring else frozenset())
    if keyring is not None:
        app[KEYRING] = KeyringFile(keyring)
    app.router.add_route("*", "/{path:.*}", forward)

    async def start_proxy(_: web.Application) -> None:
        await proxy.start()

    async def close_proxy(_: web.Application) -> None:
        await proxy.close()

    app.on_startup.append(start_proxy)
    app.on_cleanup.append(close_proxy)
    return app
