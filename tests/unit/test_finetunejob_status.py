"""Unit: FineTuneJob status is a pure function of the Job, its pods and the trainer's final report.

The Job and pod dicts here are hand-written in the shapes the kubelet and Job controller produce."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from peft_operator.api import FineTuneJobStatus, Phase
from peft_operator.api.events import CompletedEvent, FailedEvent, FailureReason
from peft_operator.api.finetunejob import AdapterRecord, Progress, RunPolicy
from peft_operator.finetunejob.status import Observation, compute_status

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
ADAPTER = AdapterRecord(uri="s3://b/a", sha256="a" * 64, size_bytes=10, base_model="hf://o/m", method="lora", rank=8)


def _job(conditions: list[dict[str, str]] | None = None, suspend: bool = False, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "demo-train"},
        "spec": {"suspend": suspend},
        "status": {"conditions": conditions or [], "startTime": "2026-11-28T11:00:00Z", **status},
    }


def _pod(
    phase: str = "Running", state: dict[str, Any] | None = None, created: str = "2026-11-28T11:00:01Z"
) -> dict[str, Any]:
    return {
        "metadata": {"creationTimestamp": created},
        "status": {"phase": phase, "containerStatuses": [{"name": "trainer", "state": state or {"running": {}}}]},
    }


def _terminated(message: str, exit_code: int = 0, reason: str = "Completed") -> dict[str, Any]:
    return {"terminated": {"exitCode": exit_code, "reason": reason, "message": message}}


def _status(obs: Observation, current: FineTuneJobStatus | None = None) -> tuple[FineTuneJobStatus, list[Any]]:
    return compute_status(current or FineTuneJobStatus(), obs, NOW)


def _condition(status: FineTuneJobStatus, type_: str) -> tuple[str, str]:
    c = next(c for c in status.conditions if c.type == type_)
    return c.status.value, c.reason


def test_new_job_is_pending_with_a_creating_event() -> None:
    status, events = _status(Observation(generation=1))
    assert status.phase is Phase.PENDING
    assert [(e.type, e.reason) for e in events] == [("Normal", "Creating")]
    assert all(c.observed_generation == 1 for c in status.conditions)


def test_invalid_spec_fails_with_the_validation_message() -> None:
    status, events = _status(Observation(generation=1, invalid="spec.dataset.uri: file:// works only in local mode"))
    assert status.phase is Phase.FAILED
    assert _condition(status, "Failed") == ("True", "InvalidSpec")
    assert events[0].type == "Warning" and "file://" in events[0].message


def test_suspended_job_is_queued_for_kueue() -> None:
    status, _ = _status(Observation(generation=1, queue="gpu-small", job=_job(suspend=True)))
    assert status.phase is Phase.QUEUED
    assert _condition(status, "Queued") == ("True", "WaitingForAdmission")
    assert "gpu-small" in next(c.message for c in status.conditions if c.type == "Queued")


def test_running_pod_makes_the_job_running_and_keeps_reported_progress() -> None:
    current = FineTuneJobStatus(phase=Phase.PENDING, progress=Progress(step=5, total_steps=50, percent=10))
    status, events = _status(Observation(generation=1, job=_job(active=1), pods=[_pod()]), current)
    assert status.phase is Phase.RUNNING
    assert status.progress is not None and status.progress.step == 5
    assert status.attempts == 1
    assert status.start_time == datetime(2026, 11, 28, 11, 0, tzinfo=UTC)
    assert [e.reason for e in events] == ["Training"]


def test_a_trainer_stopped_by_sigterm_shows_resuming_until_the_next_pod_runs() -> None:
    running = FineTuneJobStatus(phase=Phase.RUNNING)
    running.conditions = _status(Observation(generation=1, job=_job(active=1), pods=[_pod()]))[0].conditions
    stopped = _pod("Failed", _terminated("", exit_code=143, reason="Error"))
    replacement = _pod("Pending", {"waiting": {"reason": "ContainerCreating"}}, created="2026-11-28T11:30:00Z")

    status, events = _status(Observation(generation=1, job=_job(active=1), pods=[stopped, replacement]), running)
    assert status.phase is Phase.RUNNING
    assert _condition(status, "Running") == ("True", "Resuming")
    assert [(e.type, e.reason) for e in events] == [("Normal", "Resuming")]
    assert "SIGTERM" in events[0].message and "checkpoint" in events[0].message

    resumed = _pod(created="2026-11-28T11:30:00Z")
    status, events = _status(Observation(generation=1, job=_job(active=1), pods=[stopped, resumed]), status)
    assert _condition(status, "Running") == ("True", "Training") and events == []


def test_only_the_newest_finished_pod_decides_whether_the_trainer_is_resuming() -> None:
    stopped = _pod("Failed", _terminated("", exit_code=143, reason="Error"))
    crashed = _pod("Failed", _terminated("", exit_code=1, reason="Error"), created="2026-11-28T11:30:00Z")
    status, _ = _status(Observation(generation=1, job=_job(active=1, failed=1), pods=[stopped, crashed]))
    assert _condition(status, "Running")[1] != "Resuming"


def test_image_pull_error_is_shown_as_a_warning_while_pending() -> None:
    pod = _pod("Pending", {"waiting": {"reason": "ImagePullBackOff", "message": "pull access denied for x/y"}})
    status, events = _status(Observation(generation=1, job=_job(active=1), pods=[pod]))
    assert status.phase is Phase.PENDING
    assert _condition(status, "Running") == ("False", "ImagePullError")
    assert events[0].type == "Warning" and "pull access denied" in events[0].message
    again, repeated = compute_status(status, Observation(generation=1, job=_job(active=1), pods=[pod]), NOW)
    assert repeated == [] and again.conditions == status.conditions


def test_success_records_the_adapter_from_the_termination_message() -> None:
    final = CompletedEvent(adapter=ADAPTER, progress=Progress(step=50, total_steps=50, loss=0.4))
    pod = _pod("Succeeded", _terminated(final.model_dump_json(by_alias=True)))
    job = _job([{"type": "Complete", "status": "True"}], succeeded=1, completionTime="2026-11-28T11:30:00Z")
    status, events = _status(Observation(generation=1, job=job, pods=[pod]), FineTuneJobStatus(phase=Phase.RUNNING))
    assert status.phase is Phase.SUCCEEDED
    assert status.adapter == ADAPTER
    assert status.progress is not None and status.progress.percent == 100
    assert status.completion_time == datetime(2026, 11, 28, 11, 30, tzinfo=UTC)
    assert [(e.type, e.reason) for e in events] == [("Normal", "Succeeded")]


def test_success_without_any_adapter_report_is_a_failure_not_a_silent_success() -> None:
    job = _job([{"type": "Complete", "status": "True"}], succeeded=1)
    status, _ = _status(Observation(generation=1, job=job, pods=[_pod("Succeeded", _terminated(""))]))
    assert status.phase is Phase.FAILED
    assert _condition(status, "Failed") == ("True", "AdapterNotReported")


def test_bad_dataset_failure_carries_the_trainers_reason_and_message() -> None:
    final = FailedEvent(reason=FailureReason.DATASET_INVALID, message="0 usable rows: every row lacks 'completion'")
    pod = _pod("Failed", _terminated(final.model_dump_json(by_alias=True), exit_code=3, reason="Error"))
    job = _job([{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}], failed=1)
    status, events = _status(Observation(generation=1, job=job, pods=[pod]))
    assert status.phase is Phase.FAILED
    assert _condition(status, "Failed") == ("True", "DatasetInvalid")
    assert events[0].message == "0 usable rows: every row lacks 'completion'"


def test_a_permanent_error_under_torchrun_fails_the_job_before_its_job_does() -> None:
    """torchrun exits 1 whatever its workers' exit code: the Job would retry; rank 0's message says it is
    a permanent error, so the job fails at once (a retryable one waits for the Job)."""
    permanent = FailedEvent(reason=FailureReason.CONFIGURATION_ERROR, message="targetModules: no module q_prj")
    pod = _pod("Failed", _terminated(permanent.model_dump_json(by_alias=True), exit_code=1, reason="Error"))
    status, events = _status(Observation(generation=1, job=_job(failed=1), pods=[pod]))
    assert status.phase is Phase.FAILED
    assert _condition(status, "Failed") == ("True", "ConfigurationError")
    assert events[0].message == "targetModules: no module q_prj"

    retryable = FailedEvent(reason=FailureReason.TRAINING_ERROR, message="a rank's collective failed")
    pod = _pod("Failed", _terminated(retryable.model_dump_json(by_alias=True), exit_code=1, reason="Error"))
    status, _ = _status(Observation(generation=1, job=_job(failed=1), pods=[pod]))
    assert status.phase is not Phase.FAILED


def test_oom_killed_trainer_says_what_to_change() -> None:
    pod = _pod("Failed", {"terminated": {"exitCode": 137, "reason": "OOMKilled"}})
    job = _job([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}], failed=4)
    status, _ = _status(Observation(generation=1, job=job, pods=[pod]))
    assert _condition(status, "Failed") == ("True", "OOMKilled")
    assert "resources.memory" in next(c.message for c in status.conditions if c.type == "Failed")
    assert status.attempts == 4


def test_deadline_exceeded_names_max_runtime() -> None:
    job = _job([{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}], failed=1)
    status, _ = _status(Observation(generation=1, run_policy=RunPolicy(max_runtime="6h"), job=job))
    assert _condition(status, "Failed") == ("True", "DeadlineExceeded")
    assert "6h" in next(c.message for c in status.conditions if c.type == "Failed")


def test_backoff_exhausted_points_at_the_logs() -> None:
    pod = _pod("Failed", {"terminated": {"exitCode": 1, "reason": "Error"}})
    job = _job([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}], failed=4)
    status, _ = _status(Observation(generation=1, job=job, pods=[pod]))
    assert _condition(status, "Failed") == ("True", "BackoffLimitExceeded")
    assert "kubectl logs job/demo-train" in next(c.message for c in status.conditions if c.type == "Failed")


def test_cancel_annotation_makes_the_job_cancelled() -> None:
    status, events = _status(Observation(generation=1, cancelled=True, job=_job(active=1)))
    assert status.phase is Phase.CANCELLED and status.completion_time == NOW
    assert events[0].reason == "Cancelled"


def test_terminal_status_never_changes_again() -> None:
    done = FineTuneJobStatus(phase=Phase.SUCCEEDED, adapter=ADAPTER)
    status, events = _status(Observation(generation=1, job=None), done)
    assert status == done and events == []


def test_condition_transition_time_moves_only_when_status_changes() -> None:
    first, _ = _status(Observation(generation=1, job=_job(active=1), pods=[_pod()]))
    later = datetime(2026, 11, 28, 13, 0, tzinfo=UTC)
    second, events = compute_status(first, Observation(generation=1, job=_job(active=1), pods=[_pod()]), later)
    assert events == []
    assert [c.last_transition_time for c in second.conditions] == [c.last_transition_time for c in first.conditions]


def _quickstart_job() -> Any:
    from pathlib import Path

    import yaml

    from peft_operator.api import FineTuneJob

    example = Path(__file__).resolve().parents[2] / "examples" / "finetunejob-quickstart.yaml"
    body = yaml.safe_load(example.read_text())
    body["metadata"]["namespace"] = "team"
    return FineTuneJob.model_validate(body)


def test_a_missing_secret_or_key_keeps_the_job_pending_with_a_warning() -> None:
    from peft_operator.finetunejob.references import missing_secret

    job = _quickstart_job()
    refs = [ref for ref in (job.spec.dataset.credentials_secret_ref, job.spec.output.credentials_secret_ref) if ref]
    assert refs, "the quickstart names a credentials Secret"
    verdict = missing_secret(job, lambda name: None)
    assert verdict is not None and verdict.reason == "SecretNotFound"
    assert f"Secret {refs[0].name} does not exist in namespace team" in verdict.message
    assert missing_secret(job, lambda name: frozenset({"AWS_ACCESS_KEY_ID"})) is None
    status, events = _status(Observation(generation=1, blocked=verdict))
    assert status.phase is Phase.PENDING and _condition(status, "Running") == ("False", "SecretNotFound")
    assert [(e.type, e.reason) for e in events] == [("Warning", "SecretNotFound")]


def test_deploy_takes_over_only_its_own_or_its_predecessors_entry() -> None:
    from peft_operator.finetunejob.deploy import clash

    entries = [
        {"name": "tenant-a", "source": {"fineTuneJobRef": {"name": "tenant-a-v1"}}},
        {"name": "legal", "source": {"uri": "s3://b/legal", "sha256": "a" * 64}},
    ]
    assert clash(entries, "new-name", "tenant-a-v2", None) is None
    assert clash(entries, "tenant-a", "tenant-a-v1", None) is None
    assert clash(entries, "tenant-a", "tenant-a-v2", "tenant-a-v1") is None
    assert clash(entries, "tenant-a", "tenant-a-v2", None) == "FineTuneJob tenant-a-v1"
    assert clash(entries, "legal", "legal-v1", None) == "s3://b/legal"


def test_the_eval_gate_names_each_shortfall_with_the_measured_value() -> None:
    from peft_operator.api.finetunejob import DeployGate
    from peft_operator.finetunejob.deploy import gate_shortfalls

    gate = DeployGate(max_eval_loss="1.5", min_eval_rows=20)
    assert gate_shortfalls(gate, Progress(step=10, eval_loss=1.2, eval_rows=20)) == []
    assert gate_shortfalls(gate, Progress(step=10, eval_loss=1.83, eval_rows=6)) == [
        "evalLoss 1.83 is above deploy.when.maxEvalLoss 1.5",
        "evalLoss was measured on 6 held-out rows, fewer than deploy.when.minEvalRows 20 (add data or raise "
        "dataset.validationSplit)",
    ]
    assert gate_shortfalls(DeployGate(max_eval_loss="1.5"), Progress(step=10)) == [
        "no evalLoss was measured (deploy.when.maxEvalLoss is 1.5)"
    ]
    assert gate_shortfalls(DeployGate(min_eval_rows=1), None) != []


def test_a_job_that_failed_its_eval_gate_stops_asking_for_a_deploy() -> None:
    from peft_operator.finetunejob.reconcile import needs_deploy

    def body(reason: str, status: str = "False") -> dict[str, Any]:
        condition = {
            "type": "Deployed",
            "status": status,
            "reason": reason,
            "message": "",
            "lastTransitionTime": NOW.isoformat(),
        }
        return {
            "spec": {"deploy": {"adapterDeployment": "a"}},
            "status": {"phase": "Succeeded", "conditions": [condition]},
        }

    assert needs_deploy(body("AdapterDeploymentNotFound")), "a missing AdapterDeployment may appear later"
    assert not needs_deploy(body("EvalGateNotMet")), "a finished job's eval results never change"
    assert not needs_deploy(body("AdapterAdded", "True"))


def _preflight(*conditions: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "demo-preflight"},
        "spec": {},
        "status": {"conditions": [{"type": c, "status": "True"} for c in conditions]},
    }


def test_while_the_preflight_runs_the_job_is_pending_and_says_no_gpu_is_requested_yet() -> None:
    status, events = _status(Observation(generation=1, preflight_job=_preflight(), preflight_pods=[_pod()]))
    assert status.phase is Phase.PENDING and _condition(status, "Running") == ("False", "Preflight")
    assert [(e.type, e.reason) for e in events] == [("Normal", "Preflight")]
    assert "Job demo-preflight" in events[0].message and "before requesting GPUs" in events[0].message
    assert all(c.type != "PreflightPassed" for c in status.conditions)


def test_a_failed_preflight_fails_the_job_with_the_trainers_reason_and_no_training_job() -> None:
    failed = FailedEvent(
        reason=FailureReason.CONFIGURATION_ERROR,
        message="cannot apply lora to this model: it has no module named query_key_value. Its linear modules are: q_proj",
    )
    pod = _pod("Failed", _terminated(failed.model_dump_json(by_alias=True), exit_code=3, reason="Error"))
    obs = Observation(generation=1, preflight_job=_preflight("Failed"), preflight_pods=[pod])
    status, events = _status(obs)
    assert status.phase is Phase.FAILED and status.job_name is None
    assert _condition(status, "PreflightPassed") == ("False", "ConfigurationError")
    assert _condition(status, "Failed") == ("True", "ConfigurationError")
    (event,) = events
    assert event.type == "Warning" and event.reason == "ConfigurationError"
    assert event.message.startswith("The preflight (Job demo-preflight) failed, so no GPU was requested: cannot apply")


def test_a_passed_preflight_records_the_dataset_report_once() -> None:
    from peft_operator.api.events import PreflightPassedEvent
    from peft_operator.api.finetunejob import DatasetReport

    passed = PreflightPassedEvent(dataset=DatasetReport(rows=64, usable_rows=64), message="lora wraps q_proj, v_proj")
    pod = _pod("Succeeded", _terminated(passed.model_dump_json(by_alias=True)))
    obs = Observation(
        generation=1, job=_job(active=1), pods=[_pod()], preflight_job=_preflight("Complete"), preflight_pods=[pod]
    )
    status, events = _status(obs)
    assert _condition(status, "PreflightPassed") == ("True", "PreflightPassed")
    assert status.dataset is not None and status.dataset.usable_rows == 64
    assert ("Normal", "PreflightPassed") in [(e.type, e.reason) for e in events]
    _, events = compute_status(status, obs, NOW)
    assert "PreflightPassed" not in [e.reason for e in events]
