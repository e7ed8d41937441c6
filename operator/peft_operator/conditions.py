"""Conditions in the Kubernetes API conventions' shape; lastTransitionTime moves only on a status change."""

from __future__ import annotations

from datetime import datetime

from .api import Condition, ConditionStatus


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> list[Condition]:
    """A new list with the condition of `type_` set; unchanged statuses keep their transition time."""
    new_status = ConditionStatus.TRUE if status else ConditionStatus.FALSE
    previous = next((c for c in conditions if c.type == type_), None)
    transition = previous.last_transition_time if previous and previous.status == new_status else now
    updated = Condition(
        type=type_,
        status=new_status,
        reason=reason,
        message=message,
        last_transition_time=transition,
        observed_generation=generation,
    )
    return [updated if c.type == type_ else c for c in conditions] if previous else [*conditions, updated]


def condition_is_true(conditions: list[Condition], type_: str) -> bool:
    return any(c.type == type_ and c.status == ConditionStatus.TRUE for c in conditions)
