"""A Kubernetes LabelSelector (matchLabels and matchExpressions) and how it matches a set of labels."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated

from pydantic import Field

from .base import ApiModel
from .rules import Rule, RuledModel

LabelValue = Annotated[str, Field(max_length=63)]


class SelectorOperator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


_TAKES_VALUES = (SelectorOperator.IN, SelectorOperator.NOT_IN)


class LabelSelectorRequirement(RuledModel):
    RULES = (
        Rule(
            "!(self.operator in ['In', 'NotIn']) || self.values.size() > 0",
            "matchExpressions: In and NotIn need values",
            lambda r: r.operator not in _TAKES_VALUES or bool(r.values),
        ),
        Rule(
            "self.operator in ['In', 'NotIn'] || self.values.size() == 0",
            "matchExpressions: Exists and DoesNotExist take no values",
            lambda r: r.operator in _TAKES_VALUES or not r.values,
        ),
    )

    key: str = Field(min_length=1, max_length=317, description="The label key the requirement applies to.")
    operator: SelectorOperator = Field(description="In, NotIn, Exists or DoesNotExist.")
    values: list[LabelValue] = Field(
        default_factory=list, max_length=64, description="Values for In and NotIn; empty for Exists/DoesNotExist."
    )

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator is SelectorOperator.EXISTS:
            return self.key in labels
        if self.operator is SelectorOperator.DOES_NOT_EXIST:
            return self.key not in labels
        inside = self.key in labels and labels[self.key] in self.values
        return inside if self.operator is SelectorOperator.IN else not inside


class LabelSelector(ApiModel):
    """Kubernetes' LabelSelector: every matchLabels pair and every matchExpressions requirement must hold.
    An empty selector matches everything."""

    match_labels: dict[str, LabelValue] = Field(default_factory=dict, description="Labels that must be equal.")
    match_expressions: list[LabelSelectorRequirement] = Field(
        default_factory=list, max_length=32, description="Requirements that must all hold."
    )

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels.items()) and all(
            r.matches(labels) for r in self.match_expressions
        )
