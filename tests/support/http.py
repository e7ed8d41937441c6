"""One JSON-over-HTTP call for the runtime tests (real sockets, aiohttp like the servers themselves)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp


async def _request(method: str, url: str, body: Any, token: str | None, timeout: float | None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    limit = aiohttp.ClientTimeout(total=timeout)
    async with (
        aiohttp.ClientSession(timeout=limit) as session,
        session.request(method, url, json=body, headers=headers) as r,
    ):
        text = await r.text()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text


def call_json(
    url: str, method: str, body: Any = None, token: str | None = None, timeout: float | None = None
) -> tuple[int, Any]:
    """(status, parsed JSON body or the raw text when it is not JSON); `timeout` in seconds fails the call."""
    return asyncio.run(_request(method, url, body, token, timeout))
