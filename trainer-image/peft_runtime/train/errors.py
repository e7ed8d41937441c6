"""Errors that end a run: each carries the reason the operator shows in conditions and Events."""

from __future__ import annotations

from peft_operator.api.events import PERMANENT_FAILURE_EXIT_CODE, PERMANENT_FAILURE_REASONS, FailureReason

# Exit codes, for the Job's podFailurePolicy: PERMANENT means retrying the same plan cannot help.
EXIT_OK = 0
EXIT_RETRYABLE = 1
EXIT_PERMANENT = PERMANENT_FAILURE_EXIT_CODE  # the Job's podFailurePolicy fails the Job at once


class TrainerError(Exception):
    """A failure with a reason and a message that says what was wrong and how to fix it."""

    def __init__(self, reason: FailureReason, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message

    @property
    def exit_code(self) -> int:
        return EXIT_PERMANENT if self.reason in PERMANENT_FAILURE_REASONS else EXIT_RETRYABLE


def dataset_invalid(message: str) -> TrainerError:
    return TrainerError(FailureReason.DATASET_INVALID, message)


def configuration_error(message: str) -> TrainerError:
    return TrainerError(FailureReason.CONFIGURATION_ERROR, message)


def model_unavailable(message: str) -> TrainerError:
    return TrainerError(FailureReason.MODEL_UNAVAILABLE, message)


def storage_error(message: str) -> TrainerError:
    return TrainerError(FailureReason.STORAGE_ERROR, message)


def training_error(message: str) -> TrainerError:
    return TrainerError(FailureReason.TRAINING_ERROR, message)
