"""What the trainer reports to the operator (HTTP sink, JSON lines, termination message)."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field

from .base import ApiModel
from .finetunejob import AdapterRecord, DatasetReport, Progress


class FailureReason(StrEnum):
    """Why a run failed, as a CamelCase reason the operator puts into conditions and Events."""

    DATASET_INVALID = "DatasetInvalid"  # preflight found no usable rows, or the data cannot be read
    MODEL_UNAVAILABLE = "ModelUnavailable"  # base model cannot be read or is incompatible
    STORAGE_ERROR = "StorageError"  # output or checkpoint location cannot be written
    CONFIGURATION_ERROR = "ConfigurationError"  # e.g. target modules that the model does not have
    TRAINING_ERROR = "TrainingError"  # anything else (NaN loss, crash)


class PreflightEvent(ApiModel):
    event: Literal["preflight"] = "preflight"
    dataset: DatasetReport


class ProgressEvent(ApiModel):
    event: Literal["progress"] = "progress"
    progress: Progress
    lr: float | None = None


class CompletedEvent(ApiModel):
    event: Literal["completed"] = "completed"
    adapter: AdapterRecord
    progress: Progress


class PreflightPassedEvent(ApiModel):
    """The preflight step (`peft-runtime preflight`, CPU only) found nothing that stops training."""

    event: Literal["preflightPassed"] = "preflightPassed"
    dataset: DatasetReport
    message: str = Field(max_length=2048, description="What was checked, e.g. the modules the adapter wraps.")


class FailedEvent(ApiModel):
    event: Literal["failed"] = "failed"
    reason: FailureReason
    message: str = Field(max_length=2048, description="What went wrong and how to fix it.")


TrainerEvent = PreflightEvent | ProgressEvent | CompletedEvent | FailedEvent | PreflightPassedEvent
# What a finished trainer or preflight process leaves in its termination message.
FinalEvent = CompletedEvent | FailedEvent | PreflightPassedEvent

# Failures a retry of the same plan cannot mend: the trainer exits with PERMANENT_FAILURE_EXIT_CODE on
# them. The Job's pod failure policy then fails at once instead of burning the backoff limit; under torchrun,
# whose exit code is 1 whatever its workers', the operator fails the job on rank 0's termination message.
PERMANENT_FAILURE_REASONS = frozenset({FailureReason.DATASET_INVALID, FailureReason.CONFIGURATION_ERROR})
PERMANENT_FAILURE_EXIT_CODE = 3

# 128 + the signal: the trainer stopped on request (SIGTERM: pod deletion, preemption, drain; SIGINT:
# Ctrl-C in local mode), after checkpointing the step it reached; the Job's next pod resumes from there.
STOPPED_BY_SIGNAL_EXIT_CODES = {143: "SIGTERM", 130: "SIGINT"}
