"""Integration: the real trainer, as a local process standing in for the pod, trains a tiny model from
the plan the operator rendered; its reports reach FineTuneJob status through the real progress sink and
the termination message, and the recorded adapter is the one on disk."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient, BatchV1Api, CoreV1Api, CustomObjectsApi

from tests.support.controlplane import REPO_ROOT, ControlPlane
from tests.support.kubelet import wait_for
from tests.support.operator_process import OperatorProcess, operator_kubeconfig
from tests.support.tiny_model import build_tiny_llama
from tests.support.trainer_pod import LocalTrainerPod

pytestmark = pytest.mark.integration
GROUP, VERSION = "peft.dev", "v1alpha1"
LORA = {"type": "lora", "lora": {"r": 4, "alpha": 8, "targetModules": ["q_proj", "v_proj"]}}


@pytest.fixture
def pvc_root(tmp_path: Path) -> Path:
    """How the claims appear to the trainer (<root>/<claim>/<path>): the tiny model and 64 instruction rows."""
    root = tmp_path / "pvc"
    build_tiny_llama(root / "models" / "tiny")
    rows = [{"prompt": f"Say the word number {i}:", "completion": f" word{i % 7} done"} for i in range(64)]
    (root / "team-data").mkdir(parents=True)
    (root / "team-data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture
def operator(controller_manager: ControlPlane, crds_installed: list[str], tmp_path: Path) -> Iterator[OperatorProcess]:
    process = OperatorProcess(
        operator_kubeconfig(controller_manager, role="peft-operator-trainer"), tmp_path / "operator.log"
    ).start()
    try:
        yield process
    finally:
        process.stop()


def _create_job(admin: ApiClient, namespace: str, name: str, **spec: Any) -> None:
    """A FineTuneJob on the tiny model and data, writing to pvc://team-adapters/<name>."""
    body = yaml.safe_load((REPO_ROOT / "examples/finetunejob-lora.yaml").read_text())
    body["metadata"].update(name=name, namespace=namespace)
    body["spec"]["baseModel"] = {"uri": "pvc://models/tiny"}
    body["spec"]["dataset"] = {"uri": "pvc://team-data/train.jsonl", "format": "instruction"}
    body["spec"]["output"] = {"uri": f"pvc://team-adapters/{name}"}
    body["spec"] |= spec
    CustomObjectsApi(admin).create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", body)


def _status(admin: ApiClient, namespace: str, name: str) -> dict[str, Any]:
    obj = CustomObjectsApi(admin).get_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", name)
    return dict(obj.get("status") or {})


def _wait_phase(admin: ApiClient, namespace: str, name: str, phase: str, timeout: float = 60) -> dict[str, Any]:
    return wait_for(
        f"{name} {phase}",
        lambda: status if (status := _status(admin, namespace, name)).get("phase") == phase else None,
        timeout=timeout,
    )


def test_real_trainer_progress_and_adapter_reach_status(
    operator: OperatorProcess, admin: ApiClient, namespace: str, pvc_root: Path, tmp_path: Path
) -> None:
    training = {"maxSteps": 24, "batchSize": 8, "learningRate": "1e-2", "checkpointEvery": 8}
    _create_job(admin, namespace, "tiny-lora", method=LORA, training=training, resources={"gpus": 0})
    pod = LocalTrainerPod.of_job(admin, namespace, "tiny-lora-train", pvc_root, tmp_path / "pod")
    plan = json.loads(CoreV1Api(admin).read_namespaced_config_map("tiny-lora-plan", namespace).data["plan.json"])
    assert plan["progress"]["url"] == f"{operator.progress_url}/v1/progress/{namespace}/tiny-lora"
    trainer = pod.run(finish=False)
    assert trainer.returncode == 0, trainer.stderr[-3000:]
    running = wait_for(
        "the progress POSTs in status",
        lambda: (
            status if ((status := _status(admin, namespace, "tiny-lora")).get("progress") or {}).get("step") else None
        ),
    )
    assert running["dataset"]["rows"] == 64
    assert running["progress"]["totalSteps"] == 24
    assert running["progress"]["step"] >= 8, "progress POSTs reached the status"

    pod.report_terminated(trainer.returncode)
    done = _wait_phase(admin, namespace, "tiny-lora", "Succeeded")
    adapter = done["adapter"]
    manifest = pvc_root / "team-adapters" / "tiny-lora" / "manifest.json"
    assert adapter["uri"] == "pvc://team-adapters/tiny-lora"
    assert adapter["sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert adapter["method"] == "lora" and adapter["rank"] == 4
    assert done["progress"]["step"] == 24


def test_a_two_gpu_job_runs_two_trainer_processes_in_its_pod(
    operator: OperatorProcess,
    admin: ApiClient,
    namespace: str,
    pvc_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """gpus: 2 -> the pod's command is torchrun with one trainer process per GPU; played here on the CPU
    with gloo (one thread each), with strategy fsdp: the base model is sharded across them, and rank 0's
    reports reach status and say two processes trained with fsdp."""
    monkeypatch.setenv("PEFT_CPU_THREADS", "1")
    training = {"maxSteps": 6, "batchSize": 4, "learningRate": "1e-2", "checkpointEvery": 3, "strategy": "fsdp"}
    _create_job(admin, namespace, "two-gpus", method=LORA, training=training, resources={"gpus": 2})
    pod = LocalTrainerPod.of_job(admin, namespace, "two-gpus-train", pvc_root, tmp_path / "pod")
    (container,) = pod.pod.spec.containers
    assert container.command[:4] == ["torchrun", "--standalone", "--nproc-per-node=2", "--no-python"]
    assert container.resources.limits["nvidia.com/gpu"] == "2"
    trainer = pod.run()
    assert trainer.returncode == 0, trainer.stderr[-3000:]
    assert "Rank 1 of 2: batchSize 4 rows per process" in trainer.stderr
    assert "fsdp: 2 transformer blocks sharded over 2 processes; rank 1 holds" in trainer.stderr

    status = _wait_phase(admin, namespace, "two-gpus", "Succeeded")
    assert status["progress"]["processes"] == 2 and status["progress"]["step"] == 6
    assert status["progress"]["strategy"] == "fsdp"
    manifest = pvc_root / "team-adapters" / "two-gpus" / "manifest.json"
    assert status["adapter"]["sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()


def test_a_permanent_error_under_torchrun_fails_the_job_at_once_and_stops_its_job(
    operator: OperatorProcess,
    admin: ApiClient,
    namespace: str,
    pvc_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A wrong targetModules under torchrun: the trainer's exit code 3 (permanent) becomes torchrun's 1, which
    the Job's pod failure policy would retry; rank 0's termination message names the error, so the operator
    fails the job with it after that one pod and stops the Job's retries, keeping the failed pod (and its
    logs). The test operator runs no preflight."""
    monkeypatch.setenv("PEFT_CPU_THREADS", "1")
    _create_job(
        admin,
        namespace,
        "wrong-modules",
        method={"type": "lora", "lora": {"r": 4, "targetModules": ["q_prj"]}},
        training={"maxSteps": 6, "batchSize": 4},
        resources={"gpus": 2},
        runPolicy={"backoffLimit": 3},
    )
    pod = LocalTrainerPod.of_job(admin, namespace, "wrong-modules-train", pvc_root, tmp_path / "pod")
    trainer = pod.run()
    assert trainer.returncode == 1, "torchrun's own exit code, not the trainer's 3"

    status = _wait_phase(admin, namespace, "wrong-modules", "Failed", timeout=120)
    reason = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert reason["reason"] == "ConfigurationError" and "q_prj" in reason["message"], reason

    def job_failed() -> Any:
        job = BatchV1Api(admin).read_namespaced_job("wrong-modules-train", namespace)
        conditions = {c.type: c for c in job.status.conditions or [] if c.status == "True"}
        return job if "Failed" in conditions else None

    job = wait_for("the training Job failed, not retried", job_failed, timeout=120)
    assert (job.spec.backoff_limit, job.status.failed) == (0, 1)
    pods = CoreV1Api(admin).list_namespaced_pod(namespace, label_selector="job-name=wrong-modules-train").items
    assert [p.metadata.name for p in pods] == [pod.pod.metadata.name], "no second pod; the failed one stays"
