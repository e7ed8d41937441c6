"""Errors the server maps to HTTP at the edge: each carries its status code and a CamelCase reason."""

from __future__ import annotations

from peft_operator.api.agent import Reason


class ServingError(Exception):
    """Base class: `status` is the HTTP status, `reason` goes into the error body."""

    status = 500
    reason = Reason.INTERNAL_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ServingError):
    status, reason = 400, Reason.BAD_REQUEST


class Unauthorized(ServingError):
    status, reason = 401, Reason.UNAUTHORIZED


class AdminDisabled(ServingError):
    status, reason = 403, Reason.ADMIN_DISABLED


class ModelNotFound(ServingError):
    status, reason = 404, Reason.MODEL_NOT_FOUND


class AdapterNotFound(ServingError):
    status, reason = 404, Reason.ADAPTER_NOT_FOUND


class NameConflict(ServingError):
    status, reason = 409, Reason.NAME_CONFLICT


class UnsupportedMethod(ServingError):
    status, reason = 400, Reason.UNSUPPORTED_METHOD


class ChecksumMismatch(ServingError):
    status, reason = 422, Reason.CHECKSUM_MISMATCH


class AdapterCorrupt(ServingError):
    status, reason = 422, Reason.ADAPTER_CORRUPT


class IncompatibleBaseModel(ServingError):
    status, reason = 422, Reason.INCOMPATIBLE_BASE_MODEL


class RankTooLarge(ServingError):
    status, reason = 422, Reason.RANK_TOO_LARGE


class TooManyAdapters(ServingError):
    status, reason = 507, Reason.TOO_MANY_ADAPTERS


class ResidentSlotsBusy(ServingError):
    status, reason = 503, Reason.RESIDENT_SLOTS_BUSY
