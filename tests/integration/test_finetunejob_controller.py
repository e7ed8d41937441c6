"""Integration: the FineTuneJob controller as a real process against the real kube-apiserver.

kube-controller-manager runs the real Job controller and garbage collector; the tests play the
kubelet (pod status) and, for the sink, the trainer. The operator's credentials carry exactly the
RBAC rules the Helm chart grants."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient, ApiException, BatchV1Api, CoreV1Api, CustomObjectsApi

from peft_operator.api.events import CompletedEvent, FailedEvent, FailureReason, PreflightEvent, ProgressEvent
from peft_operator.api.finetunejob import AdapterRecord, DatasetReport, Progress
from tests.support import kubelet
from tests.support.controlplane import REPO_ROOT, ControlPlane
from tests.support.kubelet import wait_for
from tests.support.operator_process import OperatorProcess, operator_kubeconfig
from tests.support.secrets import create_referenced_secrets

pytestmark = pytest.mark.integration
EXAMPLES = REPO_ROOT / "examples"
GROUP, VERSION = "peft.dev", "v1alpha1"


def _example(name: str, namespace: str, **spec_changes: Any) -> dict[str, Any]:
    body = yaml.safe_load((EXAMPLES / name).read_text())
    body["metadata"]["namespace"] = namespace
    body["spec"].update(spec_changes)
    return body


def _create(admin: ApiClient, body: dict[str, Any]) -> dict[str, Any]:
    plural = "finetunejobs" if body["kind"] == "FineTuneJob" else "adapterdeployments"
    if plural == "finetunejobs":
        create_referenced_secrets(admin, body["metadata"]["namespace"], body)
    return CustomObjectsApi(admin).create_namespaced_custom_object(  # type: ignore[no-any-return]
        GROUP, VERSION, body["metadata"]["namespace"], plural, body
    )


def _get(admin: ApiClient, namespace: str, name: str, plural: str = "finetunejobs") -> dict[str, Any]:
    return CustomObjectsApi(admin).get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)  # type: ignore[no-any-return]


def _phase(admin: ApiClient, namespace: str, name: str) -> str | None:
    return (_get(admin, namespace, name).get("status") or {}).get("phase")


def _wait_phase(admin: ApiClient, namespace: str, name: str, phase: str, timeout: float = 60) -> dict[str, Any]:
    wait_for(f"{name} to be {phase}", lambda: _phase(admin, namespace, name) == phase, timeout)
    return _get(admin, namespace, name)


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == type_)


def _jobs(admin: ApiClient, namespace: str) -> list[Any]:
    return list(BatchV1Api(admin).list_namespaced_job(namespace).items)


def _pod(admin: ApiClient, namespace: str, name: str) -> Any:
    return wait_for(
        f"a trainer pod of {name}",
        lambda: kubelet.pods_of(admin, namespace, f"peft.dev/finetunejob={name}"),
    )[0]


def _events(admin: ApiClient, namespace: str, name: str) -> list[tuple[str, str, str]]:
    items = CoreV1Api(admin).list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
    return [(e.type, e.reason, e.message) for e in items]


def _post_event(operator: OperatorProcess, admin: ApiClient, namespace: str, name: str, event: Any) -> int:
    """POST a trainer event the way the trainer does, with the token from the job's Secret."""
    secret = CoreV1Api(admin).read_namespaced_secret(f"{name}-progress", namespace)
    token = base64.b64decode(secret.data["token"]).decode()
    request = urllib.request.Request(
        f"{operator.progress_url}/v1/progress/{namespace}/{name}",
        data=event.model_dump_json(by_alias=True).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


ADAPTER = AdapterRecord(
    uri="pvc://team-adapters/smollm2-lora",
    sha256="c" * 64,
    size_bytes=1234,
    base_model="hf://HuggingFaceTB/SmolLM2-135M-Instruct",
    method="lora",
    rank=8,
)


def test_lifecycle_from_apply_to_a_recorded_adapter(
    operator: OperatorProcess, admin: ApiClient, namespace: str
) -> None:
    created = _create(admin, _example("finetunejob-lora.yaml", namespace))
    uid = created["metadata"]["uid"]
    job = wait_for("the training Job", lambda: _jobs(admin, namespace))[0]
    assert job.metadata.name == "smollm2-lora-train"
    assert [(o.kind, o.uid, o.controller) for o in job.metadata.owner_references] == [("FineTuneJob", uid, True)]
    configmap = CoreV1Api(admin).read_namespaced_config_map("smollm2-lora-plan", namespace)
    assert json.loads(configmap.data["plan.json"])["job"]["uid"] == uid
    _wait_phase(admin, namespace, "smollm2-lora", "Pending")

    pod = _pod(admin, namespace, "smollm2-lora")
    kubelet.set_running(admin, pod)
    running = _wait_phase(admin, namespace, "smollm2-lora", "Running")
    assert running["status"]["jobName"] == "smollm2-lora-train"
    assert running["status"]["attempts"] == 1

    report = DatasetReport(rows=900, usable_rows=890, tokens=120_000, warnings=["10 duplicate rows"])
    assert _post_event(operator, admin, namespace, "smollm2-lora", PreflightEvent(dataset=report)) == 204
    progress = Progress(step=120, total_steps=500, loss=1.25, percent=24, eta="3m10s")
    assert _post_event(operator, admin, namespace, "smollm2-lora", ProgressEvent(progress=progress, lr=2e-4)) == 204
    stale = Progress(step=100, total_steps=500, loss=1.4, percent=20)
    assert _post_event(operator, admin, namespace, "smollm2-lora", ProgressEvent(progress=stale)) == 202
    status = _get(admin, namespace, "smollm2-lora")["status"]
    assert status["progress"]["step"] == 120 and status["progress"]["loss"] == 1.25
    assert status["dataset"]["usableRows"] == 890

    final = CompletedEvent(adapter=ADAPTER, progress=Progress(step=500, total_steps=500, loss=0.61))
    kubelet.set_terminated(admin, pod, 0, "Completed", final.model_dump_json(by_alias=True))
    done = _wait_phase(admin, namespace, "smollm2-lora", "Succeeded")
    assert done["status"]["adapter"]["sha256"] == "c" * 64
    assert done["status"]["progress"]["percent"] == 100
    assert _condition(done, "Succeeded")["status"] == "True"
    assert _condition(done, "Succeeded")["observedGeneration"] == 1
    assert done["status"]["completionTime"]
    reasons = [reason for _, reason, _ in _events(admin, namespace, "smollm2-lora")]
    assert {"JobCreated", "Starting", "Training", "Succeeded"} <= set(reasons)
    assert len(_jobs(admin, namespace)) == 1
    scraped = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in operator.metrics().splitlines()
        if line and not line.startswith("#")
    }
    assert scraped['peft_operator_reconciles_total{kind="FineTuneJob"}'] >= 3
    assert scraped['peft_operator_finetunejobs{phase="Succeeded"}'] >= 1


def test_wrong_token_is_refused_by_the_progress_endpoint(
    operator: OperatorProcess, admin: ApiClient, namespace: str
) -> None:
    _create(admin, _example("finetunejob-dora.yaml", namespace))
    wait_for("the training Job", lambda: _jobs(admin, namespace))
    request = urllib.request.Request(
        f"{operator.progress_url}/v1/progress/{namespace}/smollm2-dora",
        data=ProgressEvent(progress=Progress(step=1)).model_dump_json(by_alias=True).encode(),
        headers={"Authorization": "Bearer forged"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401
    assert "progress" not in (_get(admin, namespace, "smollm2-dora").get("status") or {})


def test_bad_dataset_fails_at_once_with_the_trainers_reason(
    operator: OperatorProcess, admin: ApiClient, namespace: str
) -> None:
    _create(admin, _example("finetunejob-ia3.yaml", namespace))
    pod = _pod(admin, namespace, "smollm2-ia3")
    failure = FailedEvent(
        reason=FailureReason.DATASET_INVALID, message="0 usable rows: no row has a 'completion' field"
    )
    kubelet.set_terminated(admin, pod, 3, "Error", failure.model_dump_json(by_alias=True))
    failed = _wait_phase(admin, namespace, "smollm2-ia3", "Failed")
    assert _condition(failed, "Failed")["reason"] == "DatasetInvalid"
    assert "no row has a 'completion' field" in _condition(failed, "Failed")["message"]
    job = _jobs(admin, namespace)[0]
    assert job.status.failed == 1  # the pod failure policy stopped the retries
    assert ("Warning", "DatasetInvalid") in [(t, r) for t, r, _ in _events(admin, namespace, "smollm2-ia3")]


def test_a_trainer_stopped_by_sigterm_is_resuming_until_the_jobs_next_pod_runs(
    operator: OperatorProcess, admin: ApiClient, namespace: str
) -> None:
    _create(admin, _example("finetunejob-adapter.yaml", namespace))
    first = _pod(admin, namespace, "smollm2-adapter")
    kubelet.set_running(admin, first)
    _wait_phase(admin, namespace, "smollm2-adapter", "Running")

    kubelet.set_terminated(admin, first, 143, "Error")  # preempted: the trainer checkpointed and exited
    resuming = wait_for(
        "the job to be Resuming",
        lambda: (
            (obj := _get(admin, namespace, "smollm2-adapter"))
            and _condition(obj, "Running")["reason"] == "Resuming"
            and obj
        ),
    )
    assert resuming["status"]["phase"] == "Running"
    assert "SIGTERM" in _condition(resuming, "Running")["message"]
    assert ("Normal", "Resuming") in [(t, r) for t, r, _ in _events(admin, namespace, "smollm2-adapter")]

    replacement = wait_for(  # the real Job controller retries the pod (after its backoff)
        "the Job's next pod",
        lambda: [
            p
            for p in kubelet.pods_of(admin, namespace, "peft.dev/finetunejob=smollm2-adapter")
            if p.metadata.uid != first.metadata.uid
        ],
        timeout=90,
    )[0]
    kubelet.set_running(admin, replacement)
    wait_for(
        "the job to be Training again",
        lambda: _condition(_get(admin, namespace, "smollm2-adapter"), "Running")["reason"] == "Training",
    )


def test_oom_killed_trainer_is_reported_as_oom(operator: OperatorProcess, admin: ApiClient, namespace: str) -> None:
    _create(admin, _example("finetunejob-prompt.yaml", namespace, runPolicy={"backoffLimit": 0}))
    kubelet.set_terminated(admin, _pod(admin, namespace, "smollm2-prompt"), 137, "OOMKilled")
    failed = _wait_phase(admin, namespace, "smollm2-prompt", "Failed")
    assert _condition(failed, "Failed")["reason"] == "OOMKilled"
    assert "resources.memory" in _condition(failed, "Failed")["message"]


def test_image_pull_error_is_visible_while_pending(operator: OperatorProcess, admin: ApiClient, namespace: str) -> None:
    _create(admin, _example("finetunejob-prefix.yaml", namespace))
    pod = _pod(admin, namespace, "smollm2-prefix")
    kubelet.set_waiting(admin, pod, "ImagePullBackOff", 'Back-off pulling image "registry.test/peft-runtime:test"')
    wait_for(
        "the ImagePullError condition",
        lambda: any(
            c["reason"] == "ImagePullError"
            for c in (_get(admin, namespace, "smollm2-prefix").get("status") or {}).get("conditions", [])
        ),
    )
    assert _phase(admin, namespace, "smollm2-prefix") == "Pending"
    warnings = [(r, m) for t, r, m in _events(admin, namespace, "smollm2-prefix") if t == "Warning"]
    assert any(r == "ImagePullError" and "registry.test/peft-runtime:test" in m for r, m in warnings)


def test_runtime_deadline_fails_the_job(operator: OperatorProcess, admin: ApiClient, namespace: str) -> None:
    _create(admin, _example("finetunejob-adapter.yaml", namespace, runPolicy={"maxRuntime": "2s"}))
    kubelet.set_running(admin, _pod(admin, namespace, "smollm2-adapter"))
    failed = _wait_phase(admin, namespace, "smollm2-adapter", "Failed", timeout=90)
    assert _condition(failed, "Failed")["reason"] == "DeadlineExceeded"
    assert "2s" in _condition(failed, "Failed")["message"]


def test_cancel_annotation_deletes_the_job(operator: OperatorProcess, admin: ApiClient, namespace: str) -> None:
    _create(admin, _example("finetunejob-lora.yaml", namespace))
    wait_for("the training Job", lambda: _jobs(admin, namespace))
    CustomObjectsApi(admin).patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "finetunejobs",
        "smollm2-lora",
        {"metadata": {"annotations": {"peft.dev/cancel": "true"}}},
    )
    cancelled = _wait_phase(admin, namespace, "smollm2-lora", "Cancelled")
    assert cancelled["status"]["completionTime"]
    wait_for("the Job to be deleted", lambda: not _jobs(admin, namespace))


def test_a_multi_node_job_warns_of_a_claim_pods_on_several_nodes_cannot_write(
    operator: OperatorProcess, admin: ApiClient, namespace: str
) -> None:
    """nodes: 2 with the output on a ReadWriteOnce claim: the Job is still created (pods the scheduler puts on
    one node share such a claim), and a Warning ClaimNotShared names the claim and what to use instead. The
    dataset's ReadOnlyMany claim is only read, so it draws no warning."""
    core = CoreV1Api(admin)
    for claim, modes in (("team-adapters", ["ReadWriteOnce"]), ("team-data", ["ReadOnlyMany"])):
        body = {
            "metadata": {"name": claim},
            "spec": {"accessModes": modes, "resources": {"requests": {"storage": "1Gi"}}},
        }
        core.create_namespaced_persistent_volume_claim(namespace, body)
    _create(admin, _example("finetunejob-lora.yaml", namespace, resources={"gpus": 1, "nodes": 2}))
    wait_for("the training Job", lambda: _jobs(admin, namespace))
    warnings = wait_for(
        "a ClaimNotShared Warning",
        lambda: [m for t, r, m in _events(admin, namespace, "smollm2-lora") if (t, r) == ("Warning", "ClaimNotShared")],
    )
    assert set(warnings) == {  # a pass repeated before the status names the Job posts it again
        "claim team-adapters is ReadWriteOnce: the 2 pods of this job can mount it only if they all run on one node; "
        "use a ReadWriteMany claim (or s3://) for a job across nodes"
    }


def test_deleting_the_finetunejob_collects_its_children(
    operator: OperatorProcess, admin: ApiClient, namespace: str
) -> None:
    _create(admin, _example("finetunejob-lora.yaml", namespace))
    wait_for("the training Job", lambda: _jobs(admin, namespace))
    # No finalizer: deleting works even while no operator runs.
    assert not _get(admin, namespace, "smollm2-lora")["metadata"].get("finalizers")
    CustomObjectsApi(admin).delete_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", "smollm2-lora")
    core = CoreV1Api(admin)
    wait_for("the Job to be collected", lambda: not _jobs(admin, namespace), timeout=90)
    wait_for(
        "the plan ConfigMap to be collected",
        lambda: "smollm2-lora-plan" not in [c.metadata.name for c in core.list_namespaced_config_map(namespace).items],
        timeout=90,
    )


def test_spec_edits_are_refused_by_the_api_server(operator: OperatorProcess, admin: ApiClient, namespace: str) -> None:
    _create(admin, _example("finetunejob-lora.yaml", namespace))
    with pytest.raises(ApiException) as refused:
        CustomObjectsApi(admin).patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "finetunejobs", "smollm2-lora", {"spec": {"training": {"maxSteps": 9}}}
        )
    assert refused.value.status == 422
    assert "spec is immutable" in refused.value.body


def test_deploy_adds_the_adapter_without_clobbering_other_owners(
    operator: OperatorProcess, admin: ApiClient, namespace: str
) -> None:
    adep = _example("adapterdeployment-quickstart.yaml", namespace)
    adep["spec"]["adapters"] = [adep["spec"]["adapters"][1]]  # only the user's own legal-summarizer
    _create(admin, adep)
    _create(admin, _example("finetunejob-quickstart.yaml", namespace))
    pod = _pod(admin, namespace, "support-bot-v1")
    kubelet.set_running(admin, pod)
    final = CompletedEvent(adapter=ADAPTER, progress=Progress(step=10, total_steps=10))
    kubelet.set_terminated(admin, pod, 0, "Completed", final.model_dump_json(by_alias=True))
    wait_for(
        "the Deployed condition",
        lambda: any(
            c["type"] == "Deployed" and c["status"] == "True"
            for c in (_get(admin, namespace, "support-bot-v1").get("status") or {}).get("conditions", [])
        ),
    )
    served = _get(admin, namespace, "smollm2-shared", "adapterdeployments")
    adapters = {a["name"]: a["source"] for a in served["spec"]["adapters"]}
    assert adapters["support-bot"] == {"fineTuneJobRef": {"name": "support-bot-v1"}}
    assert adapters["legal-summarizer"]["uri"] == "s3://tenant-b-adapters/legal/v3"
    managers = {m["manager"] for m in served["metadata"]["managedFields"]}
    assert "peft-operator-ftj-support-bot-v1" in managers


def test_operator_restarts_keep_one_job_and_the_status(
    controller_manager: ControlPlane, crds_installed: list[str], admin: ApiClient, namespace: str, tmp_path: Path
) -> None:
    """kill -9 the operator before it sees the job, while it runs, and after it finished."""
    process = OperatorProcess(
        operator_kubeconfig(controller_manager, role="peft-operator-restarts"), tmp_path / "op.log"
    )
    try:
        _create(admin, _example("finetunejob-lora.yaml", namespace))  # created while no operator runs
        process.start()
        wait_for("the training Job", lambda: _jobs(admin, namespace))
        process.kill()
        process.start()
        pod = _pod(admin, namespace, "smollm2-lora")
        kubelet.set_running(admin, pod)
        _wait_phase(admin, namespace, "smollm2-lora", "Running")
        process.kill()
        final = CompletedEvent(adapter=ADAPTER, progress=Progress(step=5, total_steps=5))
        kubelet.set_terminated(admin, pod, 0, "Completed", final.model_dump_json(by_alias=True))  # while it is down
        process.start()
        done = _wait_phase(admin, namespace, "smollm2-lora", "Succeeded")
        process.kill()
        process.start()
        assert _get(admin, namespace, "smollm2-lora")["status"] == done["status"]
        assert len(_jobs(admin, namespace)) == 1
        assert (
            len(CoreV1Api(admin).list_namespaced_config_map(namespace, label_selector="peft.dev/finetunejob").items)
            == 1
        )
    finally:
        process.stop()


def test_a_deleted_job_leaves_the_per_phase_metric(operator: OperatorProcess, admin: ApiClient, namespace: str) -> None:
    def jobs_counted() -> float:
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in operator.metrics().splitlines()
            if line.startswith("peft_operator_finetunejobs{")
        )

    before = jobs_counted()
    _create(admin, _example("finetunejob-ia3.yaml", namespace))
    wait_for("the job counted", lambda: jobs_counted() == before + 1 or None)
    CustomObjectsApi(admin).delete_namespaced_custom_object(
        "peft.dev", "v1alpha1", namespace, "finetunejobs", "smollm2-ia3"
    )
    wait_for("the deleted job no longer counted", lambda: jobs_counted() == before or None)
