"""The agent's own failures (storage, engine); the checks it shares with the engine raise serving.errors."""

from __future__ import annotations

from peft_operator.api.agent import Reason
from peft_runtime.common.errors import ServingError


class SourceNotFound(ServingError):
    status, reason = 404, Reason.SOURCE_NOT_FOUND


class SourceNotAllowed(ServingError):
    status, reason = 403, Reason.SOURCE_NOT_ALLOWED


class SourceUnavailable(ServingError):
    status, reason = 502, Reason.SOURCE_UNAVAILABLE


class InsufficientStorage(ServingError):
    status, reason = 507, Reason.INSUFFICIENT_STORAGE


class EngineRejected(ServingError):
    status, reason = 422, Reason.ENGINE_REJECTED

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None and reason in Reason.__members__.values():
            self.reason = Reason(reason)  # the built-in engine says why (RankTooLarge, ...): keep its word


class EngineUnavailable(ServingError):
    status, reason = 502, Reason.ENGINE_UNAVAILABLE
