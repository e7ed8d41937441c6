"""Argo CD health checks for FineTuneJob, AdapterDeployment and AdapterAttachment, run in gopher-lua opened as
Argo CD opens it.

The objects the scripts judge are PRODUCED by the operator's own pure status functions
(`finetunejob.status.compute_status`, `adapterdeployment.status.compute_status`, the progress endpoint's
`status_patch`) and serialized the way the operator writes them (`to_wire()`), so a change in what the
operator reports shows up here. The VM is gopher-lua v1.1.2 (Argo CD's) with only base, table, package and a
safe os open (tests/chart/luarunner.py): a script that calls `string.format` or `math.floor` errors here
as it does in an Argo CD without `useOpenLibs`."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from peft_operator.adapterattachment.admission import Verdict
from peft_operator.adapterattachment.sources import ResolvedSource
from peft_operator.adapterattachment.status import Serving, attachment_status
from peft_operator.adapterdeployment.sources import DesiredAdapter
from peft_operator.adapterdeployment.status import LoadFailure, PodReport
from peft_operator.adapterdeployment.status import compute_status as adapterdeployment_status
from peft_operator.api import AdapterAttachmentStatus, AdapterDeploymentStatus, FineTuneJobStatus, Phase
from peft_operator.api.adapterdeployment import AdapterState, AdapterStatus
from peft_operator.api.events import CompletedEvent, FailedEvent, FailureReason, ProgressEvent
from peft_operator.api.finetunejob import AdapterRecord, Progress
from peft_operator.finetunejob.progress_server import status_patch
from peft_operator.finetunejob.status import Observation
from peft_operator.finetunejob.status import compute_status as finetunejob_status
from tests.chart.argocd_cm import ARGOCD_DIR, HEALTH_CHECKS, PATCH, render_patch
from tests.chart.luarunner import LuaError, LuaRunnerMissing, ensure_runner, run_health
from tests.integration.conftest import _in_ci

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
SHA = "a" * 64
ADAPTER = AdapterRecord(
    uri="s3://tenant-a-adapters/support-bot/v1", sha256=SHA, size_bytes=10, base_model="hf://o/m", method="lora", rank=8
)

Health = Callable[[dict[str, Any]], dict[str, str]]


# --------------------------------------------------------------------------- the Lua runtime


@pytest.fixture(scope="session")
def luarunner() -> Path:
    try:
        return ensure_runner()
    except LuaRunnerMissing as e:
        if _in_ci():
            pytest.fail(f"CI is set and the gopher-lua runner cannot be built: {e}", pytrace=False)
        pytest.skip(str(e))


@pytest.fixture
def finetunejob_health(luarunner: Path) -> Health:
    return lambda obj: run_health(luarunner, ARGOCD_DIR / "health-finetunejob.lua", obj)


@pytest.fixture
def adapterdeployment_health(luarunner: Path) -> Health:
    return lambda obj: run_health(luarunner, ARGOCD_DIR / "health-adapterdeployment.lua", obj)


def test_the_sandbox_has_no_string_or_math_library_unless_opened(luarunner: Path, tmp_path: Path) -> None:
    """The runner is as strict as Argo CD: the calls the scripts used to make fail without useOpenLibs."""
    script = tmp_path / "probe.lua"
    script.write_text('return { status = "Healthy", message = string.format("%d", math.floor(obj.n)) }')
    with pytest.raises(LuaError, match="format"):
        run_health(luarunner, script, {"n": 1.5})
    assert run_health(luarunner, script, {"n": 1.5}, open_libs=True) == {"status": "Healthy", "message": "1"}


def test_the_sandbox_turns_an_unknown_health_status_into_unknown(luarunner: Path, tmp_path: Path) -> None:
    script = tmp_path / "probe.lua"
    script.write_text('return { status = "Fine", message = "" .. #obj.items .. " items" }')
    health = run_health(luarunner, script, {"items": [1, 2]})
    assert health == {"status": "Unknown", "message": "Lua returned an invalid health status"}


@pytest.mark.parametrize("loss", [1.23456, 0.61, 2.0, 0.0123456, 10.04567, 123.456, 0.0, 7.0e-4])
def test_loss_has_four_significant_digits_like_percent_4g(finetunejob_health: Health, loss: float) -> None:
    obj = _finetunejob(None)
    obj["status"] = {"phase": "Running", "observedGeneration": 1, "progress": {"percent": 5, "loss": loss}}
    assert finetunejob_health(obj)["message"] == f"Running 5% (loss {loss:.4g})"


# --------------------------------------------------------------------------- FineTuneJob objects


def _finetunejob(status: FineTuneJobStatus | None, generation: int = 1) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "peft.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "support-bot-v1", "namespace": "tenant-a", "generation": generation},
        "spec": {"method": {"type": "lora"}},
    }
    if status is not None:
        obj["status"] = status.to_wire()
    return obj


def _job(conditions: list[dict[str, str]] | None = None, suspend: bool = False, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "support-bot-v1-train"},
        "spec": {"suspend": suspend},
        "status": {"conditions": conditions or [], "startTime": "2026-11-28T11:00:00Z", **status},
    }


def _pod(phase: str = "Running", state: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"creationTimestamp": "2026-11-28T11:00:01Z"},
        "status": {"phase": phase, "containerStatuses": [{"name": "trainer", "state": state or {"running": {}}}]},
    }


def _finished_pod(event: CompletedEvent | FailedEvent, exit_code: int) -> dict[str, Any]:
    message = json.dumps(event.to_wire())
    return _pod(
        "Succeeded" if exit_code == 0 else "Failed", {"terminated": {"exitCode": exit_code, "message": message}}
    )


def _observe(obs: Observation, current: FineTuneJobStatus | None = None) -> FineTuneJobStatus:
    status, _ = finetunejob_status(current or FineTuneJobStatus(), obs, NOW)
    return status


def _running_with_progress() -> FineTuneJobStatus:
    running = _observe(Observation(generation=1, job=_job(active=1), pods=[_pod()]))
    report = ProgressEvent(progress=Progress(step=40, total_steps=100, epoch=1.2, loss=1.23456, eta="5m0s", percent=40))
    patch = status_patch(running, report)
    assert patch is not None
    return FineTuneJobStatus.model_validate({**running.to_wire(), **patch})


def test_finetunejob_without_status_is_progressing(finetunejob_health: Health) -> None:
    assert finetunejob_health(_finetunejob(None))["status"] == "Progressing"


def test_new_finetunejob_is_progressing_while_the_job_is_created(finetunejob_health: Health) -> None:
    status = _observe(Observation(generation=1))
    assert status.phase is Phase.PENDING
    health = finetunejob_health(_finetunejob(status))
    assert health == {"status": "Progressing", "message": "Creating the training Job."}


def test_queued_finetunejob_is_suspended_until_kueue_admits_it(finetunejob_health: Health) -> None:
    status = _observe(Observation(generation=1, queue="gpu-small", job=_job(suspend=True)))
    assert status.phase is Phase.QUEUED
    health = finetunejob_health(_finetunejob(status))
    assert health["status"] == "Suspended"
    assert "Kueue LocalQueue gpu-small" in health["message"]


def test_running_finetunejob_is_progressing_with_its_percent(finetunejob_health: Health) -> None:
    status = _running_with_progress()
    assert status.phase is Phase.RUNNING
    health = finetunejob_health(_finetunejob(status))
    assert health == {
        "status": "Progressing",
        "message": "The trainer is running. 40% (step 40/100, loss 1.235, eta 5m0s)",
    }


def test_running_finetunejob_without_a_report_yet_is_progressing(finetunejob_health: Health) -> None:
    status = _observe(Observation(generation=1, job=_job(active=1), pods=[_pod()]))
    assert finetunejob_health(_finetunejob(status)) == {"status": "Progressing", "message": "The trainer is running."}


def test_pending_finetunejob_says_why_the_trainer_does_not_start(finetunejob_health: Health) -> None:
    waiting = {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}
    status = _observe(Observation(generation=1, job=_job(active=1), pods=[_pod("Pending", waiting)]))
    assert status.phase is Phase.PENDING
    health = finetunejob_health(_finetunejob(status))
    assert health["status"] == "Progressing"
    assert health["message"].startswith("Cannot pull the trainer image (ImagePullBackOff)")


def test_succeeded_finetunejob_is_healthy(finetunejob_health: Health) -> None:
    done = CompletedEvent(adapter=ADAPTER, progress=Progress(step=100, total_steps=100, loss=0.61, percent=99))
    job = _job([{"type": "Complete", "status": "True"}], succeeded=1, completionTime="2026-11-28T11:30:00Z")
    status = _observe(Observation(generation=1, job=job, pods=[_finished_pod(done, 0)]), _running_with_progress())
    assert status.phase is Phase.SUCCEEDED
    health = finetunejob_health(_finetunejob(status))
    assert health == {"status": "Healthy", "message": "Training finished and the adapter was written."}


def test_failed_finetunejob_is_degraded_with_the_failed_condition_message(finetunejob_health: Health) -> None:
    failed = FailedEvent(reason=FailureReason.DATASET_INVALID, message="dataset: row 3 has no 'messages' field")
    job = _job([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}], failed=1)
    status = _observe(Observation(generation=1, job=job, pods=[_finished_pod(failed, 3)]), _running_with_progress())
    assert status.phase is Phase.FAILED
    failed_condition = next(c for c in status.conditions if c.type == "Failed")
    health = finetunejob_health(_finetunejob(status))
    assert health == {"status": "Degraded", "message": failed_condition.message}
    assert "row 3" in health["message"]


def test_invalid_finetunejob_is_degraded_with_the_validation_message(finetunejob_health: Health) -> None:
    message = "spec.dataset.uri: file:// works only in local mode; use s3://, pvc:// or hf://."
    status = _observe(Observation(generation=1, invalid=message))
    assert finetunejob_health(_finetunejob(status)) == {"status": "Degraded", "message": message}


def test_cancelled_finetunejob_is_degraded(finetunejob_health: Health) -> None:
    status = _observe(Observation(generation=1, cancelled=True), _running_with_progress())
    assert status.phase is Phase.CANCELLED
    health = finetunejob_health(_finetunejob(status))
    assert health == {"status": "Degraded", "message": "FineTuneJob cancelled"}


def test_finetunejob_status_of_an_older_generation_is_progressing(finetunejob_health: Health) -> None:
    status = _observe(Observation(generation=1, queue="gpu-small", job=_job(suspend=True)))
    health = finetunejob_health(_finetunejob(status, generation=2))
    assert health == {"status": "Progressing", "message": "Waiting for the operator to observe generation 2"}


def test_finetunejob_cancelled_while_queued_is_degraded(finetunejob_health: Health) -> None:
    queued = _observe(Observation(generation=1, queue="gpu-small", job=_job(suspend=True)))
    status = _observe(Observation(generation=1, queue="gpu-small", cancelled=True), queued)
    assert status.phase is Phase.CANCELLED
    assert finetunejob_health(_finetunejob(status))["status"] == "Degraded"


def test_running_finetunejob_of_an_older_generation_waits_for_the_operator(finetunejob_health: Health) -> None:
    health = finetunejob_health(_finetunejob(_running_with_progress(), generation=2))
    assert health == {"status": "Progressing", "message": "Waiting for the operator to observe generation 2"}


def test_finished_finetunejob_keeps_its_health_when_the_spec_changes_later(finetunejob_health: Health) -> None:
    """A finished job does not run again, so a newer generation does not make it Progressing."""
    failed = FailedEvent(reason=FailureReason.DATASET_INVALID, message="dataset: row 3 has no 'messages' field")
    job = _job([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}], failed=1)
    status = _observe(Observation(generation=1, job=job, pods=[_finished_pod(failed, 3)]), _running_with_progress())
    assert finetunejob_health(_finetunejob(status, generation=2))["status"] == "Degraded"
    cancelled = _observe(Observation(generation=1, cancelled=True), _running_with_progress())
    health = finetunejob_health(_finetunejob(cancelled, generation=2))
    assert health == {"status": "Degraded", "message": "FineTuneJob cancelled"}


# --------------------------------------------------------------------------- AdapterDeployment objects


def _adapterdeployment(status: AdapterDeploymentStatus | None, generation: int = 1) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "peft.dev/v1alpha1",
        "kind": "AdapterDeployment",
        "metadata": {"name": "smollm2-shared", "namespace": "tenant-a", "generation": generation},
        "spec": {"adapters": [{"name": "support-bot"}, {"name": "legal"}]},
    }
    if status is not None:
        obj["status"] = status.to_wire()
    return obj


DESIRED = [
    DesiredAdapter("support-bot", uri="s3://a/support-bot", sha256=SHA),
    DesiredAdapter("legal", uri="s3://b/legal", sha256="b" * 64),
]
BOTH = {"support-bot": SHA, "legal": "b" * 64}


def _deployment_status(pods: list[PodReport], replicas: int = 2, generation: int = 1) -> AdapterDeploymentStatus:
    return adapterdeployment_status(
        AdapterDeploymentStatus(),
        DESIRED,
        pods,
        replicas,
        generation,
        "http://smollm2-shared.tenant-a.svc:8000/v1",
        NOW,
    )


def _condition(status: AdapterDeploymentStatus, type_: str) -> Any:
    return next(c for c in status.conditions if c.type == type_)


def test_adapterdeployment_without_status_is_progressing(adapterdeployment_health: Health) -> None:
    assert adapterdeployment_health(_adapterdeployment(None))["status"] == "Progressing"


def test_adapterdeployment_with_every_adapter_loaded_everywhere_is_healthy(adapterdeployment_health: Health) -> None:
    status = _deployment_status([PodReport("engine-0", loaded=dict(BOTH)), PodReport("engine-1", loaded=dict(BOTH))])
    assert _condition(status, "Ready").status.value == "True"
    health = adapterdeployment_health(_adapterdeployment(status))
    assert health == {"status": "Healthy", "message": "2 adapters answer on 2 replicas."}


def test_adapterdeployment_still_loading_is_progressing(adapterdeployment_health: Health) -> None:
    status = _deployment_status([PodReport("engine-0", loaded=dict(BOTH)), PodReport("engine-1")])
    health = adapterdeployment_health(_adapterdeployment(status))
    assert health == {"status": "Progressing", "message": "0/2 adapters loaded on 1/2 replicas."}


def test_adapterdeployment_waiting_for_replicas_is_progressing(adapterdeployment_health: Health) -> None:
    status = _deployment_status([], replicas=0)
    health = adapterdeployment_health(_adapterdeployment(status))
    assert health == {"status": "Progressing", "message": "The engine has no replicas."}


def test_adapterdeployment_with_a_failed_adapter_is_degraded(adapterdeployment_health: Health) -> None:
    refused = PodReport(
        "engine-1",
        loaded={"support-bot": SHA},
        failures={"legal": LoadFailure("ChecksumMismatch", "manifest.json sha256 differs from spec")},
    )
    status = _deployment_status([PodReport("engine-0", loaded=dict(BOTH)), refused])
    health = adapterdeployment_health(_adapterdeployment(status))
    assert health["status"] == "Degraded"
    assert health["message"] == _condition(status, "Degraded").message
    assert health["message"].startswith("legal: ChecksumMismatch: manifest.json sha256 differs")


def test_adapterdeployment_with_an_unreachable_agent_is_degraded(adapterdeployment_health: Health) -> None:
    lost = PodReport("engine-1", reachable=False, error="agent at http://10.0.0.7:8001 did not answer")
    status = _deployment_status([PodReport("engine-0", loaded=dict(BOTH)), lost])
    health = adapterdeployment_health(_adapterdeployment(status))
    assert health == {"status": "Degraded", "message": "engine-1: agent at http://10.0.0.7:8001 did not answer"}


def test_adapterdeployment_status_of_an_older_generation_is_progressing(adapterdeployment_health: Health) -> None:
    ready = _deployment_status([PodReport("engine-0", loaded=dict(BOTH)), PodReport("engine-1", loaded=dict(BOTH))])
    health = adapterdeployment_health(_adapterdeployment(ready, generation=2))
    assert health == {"status": "Progressing", "message": "Waiting for the operator to observe generation 2"}


def test_adapterdeployment_staleness_falls_back_to_the_ready_condition(adapterdeployment_health: Health) -> None:
    ready = _deployment_status([PodReport("engine-0", loaded=dict(BOTH)), PodReport("engine-1", loaded=dict(BOTH))])
    obj = _adapterdeployment(ready, generation=3)
    del obj["status"]["observedGeneration"]
    assert adapterdeployment_health(obj)["status"] == "Progressing"


# --------------------------------------------------------------------------- the argocd-cm snippet


def test_argocd_cm_patch_is_generated_from_the_lua_files() -> None:
    assert PATCH.read_text() == render_patch(), "the snippet drifted: run `make chart-argocd-cm`"


def test_argocd_cm_patch_carries_every_health_check_verbatim() -> None:
    config_map = yaml.safe_load(PATCH.read_text())
    assert (config_map["kind"], config_map["metadata"]["name"]) == ("ConfigMap", "argocd-cm")
    assert config_map["data"] == {key: (ARGOCD_DIR / name).read_text() for key, name in HEALTH_CHECKS.items()}


# --------------------------------------------------------------------------- AdapterAttachment

ACCEPTED = Verdict(True, "Accepted", "Attached to AdapterDeployment llm-platform/shared as tenant-a/pirate.")
RESOLVED = ResolvedSource("ResolvedRefs", "spec.source.uri resolved.", uri="s3://tenant-a-adapters/p", sha256=SHA)
ENDPOINT = "http://shared.llm-platform.svc:8000/v1"


@pytest.fixture
def adapterattachment_health(luarunner: Path) -> Health:
    return lambda obj: run_health(luarunner, ARGOCD_DIR / "health-adapterattachment.lua", obj)


def _attachment(
    verdict: Verdict, source: ResolvedSource | None, adapter: AdapterStatus | None, generation: int = 1
) -> dict[str, Any]:
    """An AdapterAttachment as the operator writes it (its pure status function, serialized by to_wire())."""
    serving = Serving(ENDPOINT, 2, adapter) if source is not None else None
    status = attachment_status(AdapterAttachmentStatus(), 1, "tenant-a/pirate", verdict, source, serving, NOW)
    return {"metadata": {"generation": generation}, "status": status.to_wire()}


def test_adapterattachment_loaded_everywhere_is_healthy(adapterattachment_health: Health) -> None:
    loaded = AdapterStatus(name="tenant-a/pirate", state=AdapterState.LOADED, loaded_replicas=2, digest=SHA)
    health = adapterattachment_health(_attachment(ACCEPTED, RESOLVED, loaded))
    assert health == {"status": "Healthy", "message": "Serving tenant-a/pirate: Loaded on 2 replicas."}


@pytest.mark.parametrize(
    ("verdict", "source", "adapter", "reason"),
    [
        (
            Verdict(False, "NotAllowedByDeployment", "namespace tenant-z is not allowed."),
            None,
            None,
            "NotAllowedByDeployment",
        ),
        (Verdict(False, "QuotaExceeded", "namespace tenant-a already holds 4 adapters."), None, None, "QuotaExceeded"),
        (
            ACCEPTED,
            ResolvedSource("RefNotFound", "Secret s3-keys does not exist in this namespace."),
            None,
            "RefNotFound",
        ),
        (
            ACCEPTED,
            RESOLVED,
            AdapterStatus(name="tenant-a/pirate", state=AdapterState.FAILED, message="ChecksumMismatch: ..."),
            "LoadFailed",
        ),
    ],
)
def test_adapterattachment_that_cannot_serve_without_a_change_is_degraded_with_the_reason(
    adapterattachment_health: Health,
    verdict: Verdict,
    source: ResolvedSource | None,
    adapter: AdapterStatus | None,
    reason: str,
) -> None:
    health = adapterattachment_health(_attachment(verdict, source, adapter))
    assert health["status"] == "Degraded" and health["message"].startswith(reason + ": ")


def test_adapterattachment_waiting_for_training_or_loading_is_progressing(adapterattachment_health: Health) -> None:
    training = ResolvedSource("RefNotReady", "Waiting for FineTuneJob pirate-v1 (Running) to succeed.")
    assert adapterattachment_health(_attachment(ACCEPTED, training, None)) == {
        "status": "Progressing",
        "message": "Waiting for FineTuneJob pirate-v1 (Running) to succeed.",
    }
    loading = AdapterStatus(name="tenant-a/pirate", state=AdapterState.LOADING, message="Loaded on 1 of 2 replicas.")
    assert adapterattachment_health(_attachment(ACCEPTED, RESOLVED, loading))["status"] == "Progressing"
    assert adapterattachment_health({"metadata": {"generation": 1}}) == {
        "status": "Progressing",
        "message": "Waiting for the operator to report status",
    }


def test_adapterattachment_status_of_an_older_generation_is_progressing(adapterattachment_health: Health) -> None:
    loaded = AdapterStatus(name="tenant-a/pirate", state=AdapterState.LOADED, loaded_replicas=2, digest=SHA)
    health = adapterattachment_health(_attachment(ACCEPTED, RESOLVED, loaded, generation=2))
    assert health == {"status": "Progressing", "message": "Waiting for the operator to observe generation 2"}
