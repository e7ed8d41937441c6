"""FineTuneJob status as a pure function of what is observed: the Job, its pods, the trainer's reports.

No API calls here: the handlers gather the inputs, this decides phase, conditions and Events."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from pydantic import TypeAdapter, ValidationError

from ..api import FineTuneJobStatus, Phase
from ..api.events import (
    PERMANENT_FAILURE_REASONS,
    STOPPED_BY_SIGNAL_EXIT_CODES,
    CompletedEvent,
    FailedEvent,
    FinalEvent,
    PreflightPassedEvent,
    TrainerEvent,
)
from ..api.finetunejob import RunPolicy
from ..conditions import condition_is_true, set_condition
from ..events import KubeEvent
from ..naming import TRAINER_CONTAINER

TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED})
PHASE_CONDITIONS = ("Queued", "Running", "Succeeded", "Failed")
PREFLIGHT_PASSED = "PreflightPassed"
IMAGE_PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName"})
_EVENT_ADAPTER: TypeAdapter[TrainerEvent] = TypeAdapter(TrainerEvent)


@dataclass(frozen=True)
class Verdict:
    phase: Phase
    reason: str
    message: str


@dataclass(frozen=True)
class Observation:
    """Everything the status is computed from."""

    generation: int | None
    queue: str | None = None
    run_policy: RunPolicy = field(default_factory=RunPolicy)  # the spec's, or the defaults when it is invalid
    invalid: str | None = None  # the validation message, when the spec cannot run
    cancelled: bool = False
    blocked: Verdict | None = None  # why the children cannot be created yet (a missing Secret, a refusal)
    job: dict[str, Any] | None = None
    pods: list[dict[str, Any]] = field(default_factory=list)
    preflight_job: dict[str, Any] | None = None  # the CPU-only preflight Job, while it decides
    preflight_pods: list[dict[str, Any]] = field(default_factory=list)


def trainer_final_event(pods: list[dict[str, Any]]) -> FinalEvent | None:
    """The last event the trainer wrote to its termination message, from the newest finished pod."""
    for pod in sorted(pods, key=_pod_started, reverse=True):
        terminated = _trainer_state(pod).get("terminated") or {}
        message = terminated.get("message")
        if not message:
            continue
        for line in reversed(message.strip().splitlines()):
            try:
                event = _EVENT_ADAPTER.validate_python(json.loads(line))
            except (ValueError, ValidationError):
                continue
            if isinstance(event, FinalEvent):
                return event
    return None


def _pod_started(pod: dict[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("creationTimestamp") or "")


def _trainer_state(pod: dict[str, Any]) -> dict[str, Any]:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == TRAINER_CONTAINER:
            return status.get("state") or {}
    return {}


def job_condition(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == type_ and condition.get("status") == "True":
            return condition  # type: ignore[no-any-return]
    return None


def _pending_reason(pods: list[dict[str, Any]]) -> Verdict | None:
    """Why a pod is not running yet, when that needs the user's attention."""
    for pod in sorted(pods, key=_pod_started, reverse=True):
        waiting = _trainer_state(pod).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in IMAGE_PULL_REASONS:
            return Verdict(
                Phase.PENDING,
                "ImagePullError",
                f"Cannot pull the trainer image ({reason}): {waiting.get('message', '')}".strip(),
            )
        if reason == "CreateContainerConfigError":
            return Verdict(
                Phase.PENDING,
                "ConfigError",
                f"The trainer container cannot start: {waiting.get('message', '')}. "
                "Check that the referenced Secrets and keys exist in this namespace.",
            )
        for condition in (pod.get("status") or {}).get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("reason") == "Unschedulable":
                return Verdict(
                    Phase.PENDING,
                    "Unschedulable",
                    f"No node can run the trainer yet: {condition.get('message', '')}",
                )
    return None


def _stopped_by_signal(pods: list[dict[str, Any]]) -> str | None:
    """The signal that stopped the newest finished trainer, when it stopped on one."""
    finished = [p for p in pods if _trainer_state(p).get("terminated")]
    if not finished:
        return None
    newest = max(finished, key=_pod_started)
    return STOPPED_BY_SIGNAL_EXIT_CODES.get(_trainer_state(newest)["terminated"].get("exitCode"))


def _oom_killed(pods: list[dict[str, Any]]) -> bool:
    newest = sorted(pods, key=_pod_started, reverse=True)[:1]
    return any((_trainer_state(p).get("terminated") or {}).get("reason") == "OOMKilled" for p in newest)


def _failure(obs: Observation, job: dict[str, Any], condition: dict[str, Any]) -> Verdict:
    final = trainer_final_event(obs.pods)
    job_reason = condition.get("reason", "")
    if job_reason == "DeadlineExceeded":
        return Verdict(
            Phase.FAILED,
            "DeadlineExceeded",
            f"Training ran longer than runPolicy.maxRuntime ({obs.run_policy.max_runtime}); raise it or train fewer steps.",
        )
    if isinstance(final, FailedEvent):
        return Verdict(Phase.FAILED, final.reason.value, final.message)
    if _oom_killed(obs.pods):
        return Verdict(
            Phase.FAILED,
            "OOMKilled",
            "The trainer ran out of memory; raise resources.memory, or lower training.batchSize or maxSeqLength.",
        )
    if job_reason == "BackoffLimitExceeded":
        failed = (job.get("status") or {}).get("failed", 0)
        return Verdict(
            Phase.FAILED,
            "BackoffLimitExceeded",
            f"The trainer failed {failed} times; see `kubectl logs job/{job['metadata']['name']}`.",
        )
    return Verdict(Phase.FAILED, job_reason or "TrainerFailed", condition.get("message") or "The training Job failed.")


def _preflight_verdict(obs: Observation, preflight: dict[str, Any]) -> Verdict:
    name = preflight["metadata"]["name"]
    if (condition := job_condition(preflight, "Failed")) is not None:
        failed = _failure(replace(obs, pods=obs.preflight_pods), preflight, condition)
        return Verdict(
            Phase.FAILED, failed.reason, f"The preflight (Job {name}) failed, so no GPU was requested: {failed.message}"
        )
    if (blocked := _pending_reason(obs.preflight_pods)) is not None:
        return blocked
    return Verdict(
        Phase.PENDING,
        "Preflight",
        f"Checking the dataset, tokenizer and target modules on CPU (Job {name}) before requesting GPUs.",
    )


def _preflight_outcome(status: FineTuneJobStatus, obs: Observation, verdict: Verdict, now: datetime) -> list[KubeEvent]:
    """The PreflightPassed condition (and status.dataset) once the preflight Job has finished."""
    preflight = obs.preflight_job
    if preflight is None:
        return []
    if job_condition(preflight, "Complete") is not None:
        final = trainer_final_event(obs.preflight_pods)
        message = "The preflight found nothing that stops training."
        if isinstance(final, PreflightPassedEvent):
            status.dataset, message = final.dataset, f"Preflight passed: {final.message}"
        passed_before = condition_is_true(status.conditions, PREFLIGHT_PASSED)
        status.conditions = set_condition(
            status.conditions, PREFLIGHT_PASSED, True, "PreflightPassed", message, obs.generation, now
        )
        return [] if passed_before else [KubeEvent("Normal", "PreflightPassed", message)]
    if job_condition(preflight, "Failed") is not None:
        status.conditions = set_condition(
            status.conditions, PREFLIGHT_PASSED, False, verdict.reason, verdict.message, obs.generation, now
        )
    return []  # a failure's Warning is the Failed phase's own Event


def decide(obs: Observation) -> Verdict:
    """Where a job that has not finished stands now."""
    if obs.invalid is not None:
        return Verdict(Phase.FAILED, "InvalidSpec", obs.invalid)
    if obs.cancelled:
        return Verdict(
            Phase.CANCELLED, "Cancelled", "Cancelled by the peft.dev/cancel annotation; the Job was deleted."
        )
    if obs.blocked is not None:
        return obs.blocked
    job = obs.job
    if job is None and obs.preflight_job is not None:
        return _preflight_verdict(obs, obs.preflight_job)
    if job is None:
        return Verdict(Phase.PENDING, "Creating", "Creating the training Job.")
    if (condition := job_condition(job, "Failed")) is not None:
        return _failure(obs, job, condition)
    if job_condition(job, "Complete") is not None:
        return Verdict(Phase.SUCCEEDED, "Succeeded", "Training finished and the adapter was written.")
    final = trainer_final_event(obs.pods)
    if isinstance(final, FailedEvent) and final.reason in PERMANENT_FAILURE_REASONS:
        return Verdict(Phase.FAILED, final.reason.value, final.message)  # torchrun's pod exit code hides it
    if (job.get("spec") or {}).get("suspend"):
        where = f"Kueue LocalQueue {obs.queue}" if obs.queue else "the Job to be resumed"
        return Verdict(Phase.QUEUED, "WaitingForAdmission", f"Waiting for {where} to admit it.")
    if (blocked := _pending_reason(obs.pods)) is not None:
        return blocked
    if any((p.get("status") or {}).get("phase") == "Running" for p in obs.pods):
        return Verdict(Phase.RUNNING, "Training", "The trainer is running.")
    if (stopped_by := _stopped_by_signal(obs.pods)) is not None:
        return Verdict(
            Phase.RUNNING,
            "Resuming",
            f"The trainer was stopped by {stopped_by} (preemption, eviction, a node drain or a deleted pod) "
            "and checkpointed first; the Job's next pod resumes from its newest checkpoint.",
        )
    return Verdict(Phase.PENDING, "Starting", "Waiting for the trainer pod to start.")


def compute_status(
    current: FineTuneJobStatus, obs: Observation, now: datetime
) -> tuple[FineTuneJobStatus, list[KubeEvent]]:
    """The next status and the Events that announce what changed."""
    if current.phase in TERMINAL_PHASES:
        return current, []  # a finished job's record never changes
    verdict = decide(obs)
    status = current.model_copy(deep=True)
    status.observed_generation = obs.generation
    job = obs.job or {}
    job_status = job.get("status") or {}
    if job:
        status.job_name = job["metadata"]["name"]
        status.attempts = max(
            status.attempts,
            int(job_status.get("failed", 0)) + int(job_status.get("succeeded", 0)) + int(job_status.get("active", 0)),
        )
        status.start_time = status.start_time or _timestamp(job_status.get("startTime"))
    final = trainer_final_event(obs.pods)
    if verdict.phase is Phase.SUCCEEDED:
        if isinstance(final, CompletedEvent):
            status.adapter = final.adapter
            status.progress = final.progress
        if status.adapter is None:
            verdict = Verdict(
                Phase.FAILED,
                "AdapterNotReported",
                "The Job succeeded but the trainer reported no adapter; check the trainer logs.",
            )
        elif status.progress is not None:
            status.progress.percent = 100
    if verdict.phase in TERMINAL_PHASES:
        status.completion_time = _timestamp(job_status.get("completionTime")) or now
    for type_ in PHASE_CONDITIONS:
        active = _condition_for(verdict.phase) == type_
        # While Pending, Running=False carries why (e.g. ImagePullError), so `kubectl describe` shows it.
        explains = active or (type_ == "Running" and verdict.phase is Phase.PENDING)
        status.conditions = set_condition(
            status.conditions,
            type_,
            active,
            verdict.reason if explains else _inactive_reason(type_, verdict.phase),
            verdict.message if explains else "",
            obs.generation,
            now,
        )
    events = _preflight_outcome(status, obs, verdict, now)
    if verdict.phase != current.phase or _reason_changed(current, verdict):
        kind = "Warning" if verdict.phase is Phase.FAILED or verdict.reason in _WARNING_REASONS else "Normal"
        events.append(KubeEvent(kind, verdict.reason, verdict.message))
    status.phase = verdict.phase
    return status, events


# Pending reasons that need someone to act (children.py and references.py name the last four).
_WARNING_REASONS = frozenset(
    {
        "ImagePullError",
        "ConfigError",
        "Unschedulable",
        "SecretNotFound",
        "SecretKeyNotFound",
        "CreateRejected",
        "NameTaken",
    }
)
_ANNOUNCED_REASONS = _WARNING_REASONS | {"Resuming", "Preflight"}  # an Event even when the phase stays the same


def _condition_for(phase: Phase) -> str | None:
    return {
        Phase.QUEUED: "Queued",
        Phase.RUNNING: "Running",
        Phase.SUCCEEDED: "Succeeded",
        Phase.FAILED: "Failed",
    }.get(phase)


def _inactive_reason(type_: str, phase: Phase) -> str:
    return f"Not{type_}" if phase not in TERMINAL_PHASES else phase.value


def _reason_changed(current: FineTuneJobStatus, verdict: Verdict) -> bool:
    """A new reason within the same phase (e.g. Pending: Starting -> ImagePullError) is worth an Event."""
    running = next((c for c in current.conditions if c.type == "Running"), None)
    return verdict.reason in _ANNOUNCED_REASONS and (running is None or running.reason != verdict.reason)


def _timestamp(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None
