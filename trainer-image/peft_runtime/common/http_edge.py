"""What the server and the agent share at the HTTP edge: bearer-token auth, errors as JSON, and running an
aiohttp application (in the foreground for the CLI, or on a background thread for tests and benchmarks).
No torch here: the agent imports this module."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from .errors import AdminDisabled, BadRequest, ServingError, Unauthorized

log = logging.getLogger(__name__)

TOKEN_ENV = "PEFT_ADMIN_TOKEN"
ErrorBodyFactory = Callable[[int, str, str], dict[str, Any]]


class TokenSource:
    """The admin bearer token: from a file (re-read on each check, so a rotated Secret takes effect) or the
    environment. With neither, admin routes answer 403 AdminDisabled."""

    def __init__(self, token_file: Path | None = None, env_var: str = TOKEN_ENV) -> None:
        self.token_file = token_file
        self._env_token = os.environ.get(env_var) or None

    def current(self) -> str | None:
        if self.token_file is not None:
            try:
                return self.token_file.read_text().strip() or None
            except OSError:
                log.error("Cannot read the admin token file %s", self.token_file)
                return None
        return self._env_token

    def check(self, request: web.Request) -> None:
        expected = self.current()
        if expected is None:
            raise AdminDisabled("no admin token is configured (--token-file or PEFT_ADMIN_TOKEN): admin routes are off")
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
            raise Unauthorized("missing or wrong bearer token: send 'Authorization: Bearer <token>'")


def json_response(body: BaseModel | dict[str, Any], status: int = 200) -> web.Response:
    data = body.model_dump(mode="json", by_alias=True, exclude_none=True) if isinstance(body, BaseModel) else body
    return web.json_response(data, status=status)


async def read_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BadRequest(f"the request body is not valid JSON: {error}") from error


def describe(error: ValidationError) -> str:
    """One line per problem: 'field.path: message'."""
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(str(p) for p in item["loc"]) or "body"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def error_middleware(body: ErrorBodyFactory) -> Any:
    """Map ServingError, pydantic's ValidationError and unexpected failures to JSON error responses."""

    @web.middleware
    async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
        try:
            return await handler(request)
        except ServingError as error:
            return web.json_response(body(error.status, str(error.reason), error.message), status=error.status)
        except ValidationError as error:
            return web.json_response(body(400, "BadRequest", describe(error)), status=400)
        except web.HTTPException as error:
            if error.status < 400:
                raise
            reason = "AdapterNotFound" if error.status == 404 else "BadRequest"
            return web.json_response(body(error.status, reason, error.reason or "error"), status=error.status)
        except Exception as error:
            log.exception("Unexpected error in %s %s", request.method, request.path)
            return web.json_response(body(500, "InternalError", f"internal error: {error}"), status=500)

    return middleware


class BackgroundServer:
    """An aiohttp application on a loopback port, served from its own thread and event loop."""

    def __init__(self, make_app: Callable[[], web.Application], host: str = "127.0.0.1", port: int = 0) -> None:
        self._make_app = make_app
        self.host = host
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="http-server", daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> BackgroundServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=60)
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(self._make_app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
