"""Bad requests in OpenAI's error shape with `param` set: the field a validation error is about, so that
`openai.BadRequestError.param` names it and the message starts with it (`"n: Input should be ..."`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from .protocol import ErrorResponse

# pydantic's names for the members of a union and for validator wrappers, which are not fields
_TYPE_LOCS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def field_path(loc: tuple[int | str, ...], inner: str | None = None) -> str:
    """('messages', 0, 'content') -> 'messages[0].content', skipping pydantic's own markers."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif "[" not in part and part not in _TYPE_LOCS:
            path += f".{part}" if path else part
    if inner:
        path += inner if inner.startswith("[") or not path else f".{inner}"
    return path


def describe(error: ValidationError) -> tuple[str | None, str]:
    """(the first field at fault, one 'field: message' per distinct problem)."""
    params: list[str] = []
    lines: list[str] = []
    for item in error.errors(include_url=False):
        param = field_path(item["loc"], (item.get("ctx") or {}).get("param"))
        line = f"{param}: {item['msg']}" if param else item["msg"]
        if line not in lines:
            lines.append(line)
            params.append(param)
    return (params[0] or None) if params else None, "; ".join(lines)


@web.middleware
async def validation_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> Any:
    try:
        return await handler(request)
    except ValidationError as error:
        param, message = describe(error)
        return web.json_response(ErrorResponse.of(400, "BadRequest", message, param), status=400)
