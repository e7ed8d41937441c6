"""Forward one request to the engine and stream its answer back unchanged: status, headers and body bytes
as they arrive (server-sent events included), compressed or not."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

# RFC 9110 7.6.1: they describe one connection, not the message; Host and Content-Length are set anew.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


class EngineUnreachable(Exception):
    """The engine did not accept the connection (still starting, or gone)."""


def _end_to_end(headers: Mapping[str, str], dropped: frozenset[str] = frozenset()) -> CIMultiDict[str]:
    kept: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        if name.lower() not in _HOP_BY_HOP and name.lower() not in dropped:
            kept.add(name, value)
    return kept


class EngineProxy:
    """One connection pool to the engine; `forward` sends `path` (the route the gate checked, never the raw
    request target) with the request's query, headers and body, less `dropped_headers` (lowercase names: the
    clients' API keys stay at the gate)."""

    def __init__(self, engine_url: str, dropped_headers: frozenset[str] = frozenset()) -> None:
        self.engine_url = engine_url.rstrip("/")
        self.dropped_headers = dropped_headers
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # No total timeout: a long generation streams for as long as it takes. No pool limit: the engine
        # queues requests itself. No decompression: the bytes go back as the engine sent them.
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            connector=aiohttp.TCPConnector(limit=0),
            auto_decompress=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def forward(self, request: web.Request, path: str) -> web.StreamResponse:
        assert self._session is not None, "start() first"
        body = await request.read()
        async with contextlib.AsyncExitStack() as stack:
            try:
                upstream = await stack.enter_async_context(
                    self._session.request(
                        request.method,
                        self.engine_url + path,
                        params=request.rel_url.query,
                        data=body or None,
                        headers=_end_to_end(request.headers, self.dropped_headers),
                    )
                )
            except (aiohttp.ClientConnectionError, TimeoutError) as error:
                raise EngineUnreachable(f"the engine at {self.engine_url} is not answering: {error}") from error
            return await _relay(request, upstream)

    async def get_json(self, path: str) -> tuple[int, Any]:
        """GET `path` from the engine as the gate itself (no client headers): its status and decoded JSON."""
        assert self._session is not None, "start() first"
        try:
            # identity: the session does not decompress, and this body is read here, not relayed.
            async with self._session.get(self.engine_url + path, headers={"Accept-Encoding": "identity"}) as upstream:
                return upstream.status, await upstream.json(content_type=None)
        except (aiohttp.ClientConnectionError, TimeoutError) as error:
            raise EngineUnreachable(f"the engine at {self.engine_url} is not answering: {error}") from error


async def _relay(request: web.Request, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
    """Once the engine has answered, its status and headers are the client's; a failure mid-body
    propagates, and aiohttp closes the client's connection so a cut stream never looks complete."""
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=_end_to_end(upstream.headers))
    if upstream.content_length is not None:
        response.content_length = upstream.content_length
    await response.prepare(request)
    async for chunk in upstream.content.iter_any():
        await response.write(chunk)
    await response.write_eof()
    return response
