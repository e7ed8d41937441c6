"""HTTP routes of the adapter agent (API: peft_operator/api/agent.py): thin handlers over `AdapterAgent`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

from peft_operator.api.agent import (
    ADAPTERS_PATH,
    HEALTH_PATH,
    KEYRING_PATH,
    ErrorBody,
    ErrorDetail,
    Keyring,
    LoadAdapterRequest,
)
from peft_runtime.common.http_edge import TokenSource, error_middleware, json_response, read_body

from .keyring import write_keyring
from .service import AdapterAgent

AGENT = web.AppKey("agent", AdapterAgent)
TOKEN = web.AppKey("token", TokenSource)
KEYRING_FILE = web.AppKey("keyring_file", Path)


def error_body(status: int, reason: str, message: str) -> dict[str, Any]:
    wire: dict[str, Any] = ErrorBody(error=ErrorDetail(reason=reason, message=message)).to_wire()
    return wire


def create_app(agent: AdapterAgent, token: TokenSource, keyring_file: Path | None = None) -> web.Application:
    """`keyring_file`: where the engine gate reads its API keys (access.apiKeys: Required)."""
    app = web.Application(middlewares=[error_middleware(error_body)])
    app[AGENT] = agent
    app[TOKEN] = token
    app.router.add_get(HEALTH_PATH, health)
    if keyring_file is not None:
        app[KEYRING_FILE] = keyring_file
        app.router.add_put(KEYRING_PATH, put_keyring)
    app.router.add_get(ADAPTERS_PATH, list_adapters)
    # A name is a label, or <namespace>/<label> for an adapter attached from another namespace.
    one_adapter = ADAPTERS_PATH + "/{name:[^/]+(/[^/]+)?}"
    app.router.add_get(one_adapter, get_adapter)
    app.router.add_put(one_adapter, put_adapter)
    app.router.add_delete(one_adapter, delete_adapter)

    async def close_engine_client(_: web.Application) -> None:
        await agent.engine.close()

    app.on_cleanup.append(close_engine_client)
    return app


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def list_adapters(request: web.Request) -> web.Response:
    request.app[TOKEN].check(request)
    return json_response(await request.app[AGENT].list())


async def get_adapter(request: web.Request) -> web.Response:
    request.app[TOKEN].check(request)
    name = request.match_info["name"]
    report = await request.app[AGENT].get(name)
    if report is None:
        return web.json_response(
            error_body(404, "AdapterNotFound", f"this replica has no adapter '{name}'"), status=404
        )
    return json_response(report)


async def put_adapter(request: web.Request) -> web.Response:
    request.app[TOKEN].check(request)
    body = LoadAdapterRequest.model_validate(await read_body(request))
    return json_response(await request.app[AGENT].put(request.match_info["name"], body))


async def delete_adapter(request: web.Request) -> web.Response:
    request.app[TOKEN].check(request)
    return json_response(await request.app[AGENT].delete(request.match_info["name"]))


async def put_keyring(request: web.Request) -> web.Response:
    request.app[TOKEN].check(request)
    keyring = Keyring.model_validate(await read_body(request))
    return json_response(write_keyring(request.app[KEYRING_FILE], keyring))
