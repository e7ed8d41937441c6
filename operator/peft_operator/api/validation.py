"""Turn pydantic's errors into messages a user can act on: the field path, what is wrong, what to do."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

ModelT = TypeVar("ModelT", bound=BaseModel)


class SpecError(ValueError):
    """The object is not valid; `problems` holds one 'path: message' line per field."""

    def __init__(self, kind: str, name: str | None, problems: list[str]):
        self.problems = problems
        subject = f"{kind} {name}" if name else kind
        super().__init__(f"{subject} is invalid: " + "; ".join(problems))


def _path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item.startswith("function-") or item in ("constrained-str",):
            continue  # validator wrapper names, not fields
        else:
            parts.append(("." if parts else "") + item)
    return "".join(parts) or "(root)"


def _message(error: Any) -> str:
    kind, msg, given = error["type"], error["msg"], error.get("input")
    if kind == "value_error":
        return str(msg).removeprefix("Value error, ")
    if kind == "missing":
        return "is required but missing; add it"
    if kind == "extra_forbidden":
        return "is not a known field; check the spelling (fields are camelCase) or remove it"
    if kind == "enum" or kind == "literal_error":
        return f"{given!r} is not allowed: {msg.lower()}"
    if isinstance(given, (str, int, float, bool)):
        return f"{msg.lower()} (got {given!r})"
    return str(msg).lower()


def problems_of(error: ValidationError) -> list[str]:
    return [f"{_path(tuple(e['loc']))}: {_message(e)}" for e in error.errors()]


def parse_object(model: type[ModelT], body: dict[str, Any]) -> ModelT:
    """Validate a Kubernetes object body against an API model, raising SpecError on any problem."""
    try:
        return model.model_validate(body)
    except ValidationError as error:
        name = (body.get("metadata") or {}).get("name") if isinstance(body, dict) else None
        raise SpecError(model.__name__, name, problems_of(error)) from None
