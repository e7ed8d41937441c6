"""Cross-field rules, each declared once: the API server checks it as CEL (the CRD's
x-kubernetes-validations, rendered by crdgen from the model's JSON schema) and the model checks the same
rule in Python after parsing, so both refuse an object with the same message."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from pydantic import ConfigDict, model_validator

from .base import ApiModel


@dataclass(frozen=True)
class Rule:
    """`cel` and `holds` say the same thing, about the wire form and the parsed model respectively."""

    cel: str
    message: str
    # None for a transition rule (oldSelf): only the API server sees the old object.
    holds: Callable[[Any], bool] | None


def check(rule: Rule, value: Any) -> None:
    """Refuse `value` with the rule's message when the rule does not hold for it."""
    if rule.holds is not None and not rule.holds(value):
        raise ValueError(rule.message)


def cel_validations(rules: tuple[Rule, ...]) -> list[dict[str, str]]:
    return [{"rule": rule.cel, "message": rule.message} for rule in rules]


def _add_cel_rules(schema: dict[str, Any], model: type[Any]) -> None:
    rules: tuple[Rule, ...] = getattr(model, "RULES", ())
    if rules:
        schema["x-kubernetes-validations"] = cel_validations(rules)


class RuledModel(ApiModel):
    """A model whose `RULES` become both its schema node's CEL rules and a check after validation."""

    RULES: ClassVar[tuple[Rule, ...]] = ()
    model_config = ConfigDict(json_schema_extra=_add_cel_rules)

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        for rule in self.RULES:
            check(rule, self)
        return self
