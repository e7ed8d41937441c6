"""Integration: the real trainer, as a local process standing in for the pod, trains a tiny model from
the plan the operator rendered; its reports reach FineTuneJob status through the real progress sink and
the termination message, and the recorded adapter is the one on disk."""

from __future__ import annotations

import hashlib
import json
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


def _dataset(path: Path) -> None:
    rows = [{"prompt": f"Say the word number {i}:", "completion": f" word{i % 7} done"} for i in range(64)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_real_trainer_progress_and_adapter_reach_status(
    controller_manager: ControlPlane, crds_installed: list[str], admin: ApiClient, namespace: str, tmp_path: Path
) -> None:
    pvc_root = tmp_path / "pvc"  # how the claims appear to the trainer: <root>/<claim>/<path>
    build_tiny_llama(pvc_root / "models" / "tiny")
    _dataset(pvc_root / "team-data" / "train.jsonl")
    operator = OperatorProcess(
        operator_kubeconfig(controller_manager, role="peft-operator-trainer"), tmp_path / "operator.log"
    ).start()
    try:
        body = yaml.safe_load((REPO_ROOT / "examples/finetunejob-lora.yaml").read_text())
        body["metadata"].update(name="tiny-lora", namespace=namespace)
        body["spec"]["baseModel"] = {"uri": "pvc://models/tiny"}
        body["spec"]["dataset"] = {"uri": "pvc://team-data/train.jsonl", "format": "instruction"}
        body["spec"]["method"] = {"type": "lora", "lora": {"r": 4, "alpha": 8, "targetModules": ["q_proj", "v_proj"]}}
        body["spec"]["training"] = {"maxSteps": 24, "batchSize": 8, "learningRate": "1e-2", "checkpointEvery": 8}
        body["spec"]["resources"] = {"gpus": 0}
        body["spec"]["output"] = {"uri": "pvc://team-adapters/tiny-lora"}
        CustomObjectsApi(admin).create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", body)
        pod = LocalTrainerPod.of_job(admin, namespace, "tiny-lora-train", pvc_root, tmp_path / "pod")
        plan = json.loads(CoreV1Api(admin).read_namespaced_config_map("tiny-lora-plan", namespace).data["plan.json"])
        assert plan["progress"]["url"] == f"{operator.progress_url}/v1/progress/{namespace}/tiny-lora"
        trainer = pod.run(finish=False)
        assert trainer.returncode == 0, trainer.stderr[-3000:]
        running = CustomObjectsApi(admin).get_namespaced_custom_object(
            GROUP, VERSION, namespace, "finetunejobs", "tiny-lora"
        )
        assert running["status"]["dataset"]["rows"] == 64
        assert running["status"]["progress"]["totalSteps"] == 24
        assert running["status"]["progress"]["step"] >= 8, "progress POSTs reached the status"

        pod.report_terminated(trainer.returncode)
        wait_for(
            "Succeeded",
            lambda: (
                CustomObjectsApi(admin)
                .get_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", "tiny-lora")
                .get("status", {})
                .get("phase")
                == "Succeeded"
            ),
        )
        done = CustomObjectsApi(admin).get_namespaced_custom_object(
            GROUP, VERSION, namespace, "finetunejobs", "tiny-lora"
        )
        adapter = done["status"]["adapter"]
        manifest = pvc_root / "team-adapters" / "tiny-lora" / "manifest.json"
        assert adapter["uri"] == "pvc://team-adapters/tiny-lora"
        assert adapter["sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
        assert adapter["method"] == "lora" and adapter["rank"] == 4
        assert done["status"]["progress"]["step"] == 24
    finally:
        operator.stop()


def test_a_two_gpu_job_runs_two_trainer_processes_in_its_pod(
    controller_manager: ControlPlane,
    crds_installed: list[str],
    admin: ApiClient,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """gpus: 2 -> the pod's command is torchrun with one trainer process per GPU; played here on the CPU
    with gloo (one thread each), rank 0's reports reach status and say two processes trained."""
    monkeypatch.setenv("PEFT_CPU_THREADS", "1")
    pvc_root = tmp_path / "pvc"
    build_tiny_llama(pvc_root / "models" / "tiny")
    _dataset(pvc_root / "team-data" / "train.jsonl")
    operator = OperatorProcess(
        operator_kubeconfig(controller_manager, role="peft-operator-trainer"), tmp_path / "operator.log"
    ).start()
    try:
        body = yaml.safe_load((REPO_ROOT / "examples/finetunejob-lora.yaml").read_text())
        body["metadata"].update(name="two-gpus", namespace=namespace)
        body["spec"]["baseModel"] = {"uri": "pvc://models/tiny"}
        body["spec"]["dataset"] = {"uri": "pvc://team-data/train.jsonl", "format": "instruction"}
        body["spec"]["method"] = {"type": "lora", "lora": {"r": 4, "alpha": 8, "targetModules": ["q_proj", "v_proj"]}}
        body["spec"]["training"] = {"maxSteps": 6, "batchSize": 4, "learningRate": "1e-2", "checkpointEvery": 3}
        body["spec"]["resources"] = {"gpus": 2}
        body["spec"]["output"] = {"uri": "pvc://team-adapters/two-gpus"}
        CustomObjectsApi(admin).create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", body)
        pod = LocalTrainerPod.of_job(admin, namespace, "two-gpus-train", pvc_root, tmp_path / "pod")
        (container,) = pod.pod.spec.containers
        assert container.command[:4] == ["torchrun", "--standalone", "--nproc-per-node=2", "--no-python"]
        assert container.resources.limits["nvidia.com/gpu"] == "2"
        trainer = pod.run()
        assert trainer.returncode == 0, trainer.stderr[-3000:]
        assert "Rank 1 of 2: batchSize 4 rows per process" in trainer.stderr

        def succeeded() -> dict[str, Any] | None:
            status = (
                CustomObjectsApi(admin)
                .get_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", "two-gpus")
                .get("status", {})
            )
            return status if status.get("phase") == "Succeeded" else None

        status = wait_for("Succeeded", succeeded)
        assert status["progress"]["processes"] == 2 and status["progress"]["step"] == 6
        manifest = pvc_root / "team-adapters" / "two-gpus" / "manifest.json"
        assert status["adapter"]["sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    finally:
        operator.stop()


def test_a_permanent_error_under_torchrun_fails_the_job_at_once_and_stops_its_job(
    controller_manager: ControlPlane,
    crds_installed: list[str],
    admin: ApiClient,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A wrong targetModules under torchrun: the trainer's exit code 3 (permanent) becomes torchrun's 1, which
    the Job's pod failure policy would retry; rank 0's termination message names the error, so the operator
    fails the job with it after that one pod and deletes the Job (the test operator runs no preflight)."""
    monkeypatch.setenv("PEFT_CPU_THREADS", "1")
    pvc_root = tmp_path / "pvc"
    build_tiny_llama(pvc_root / "models" / "tiny")
    _dataset(pvc_root / "team-data" / "train.jsonl")
    operator = OperatorProcess(
        operator_kubeconfig(controller_manager, role="peft-operator-trainer"), tmp_path / "operator.log"
    ).start()
    try:
        body = yaml.safe_load((REPO_ROOT / "examples/finetunejob-lora.yaml").read_text())
        body["metadata"].update(name="wrong-modules", namespace=namespace)
        body["spec"]["baseModel"] = {"uri": "pvc://models/tiny"}
        body["spec"]["dataset"] = {"uri": "pvc://team-data/train.jsonl", "format": "instruction"}
        body["spec"]["method"] = {"type": "lora", "lora": {"r": 4, "targetModules": ["q_prj"]}}
        body["spec"]["training"] = {"maxSteps": 6, "batchSize": 4}
        body["spec"]["resources"] = {"gpus": 2}
        body["spec"]["runPolicy"] = {"backoffLimit": 3}
        body["spec"]["output"] = {"uri": "pvc://team-adapters/wrong-modules"}
        CustomObjectsApi(admin).create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", body)
        pod = LocalTrainerPod.of_job(admin, namespace, "wrong-modules-train", pvc_root, tmp_path / "pod")
        trainer = pod.run()
        assert trainer.returncode == 1, "torchrun's own exit code, not the trainer's 3"

        def failed() -> dict[str, Any] | None:
            status = (
                CustomObjectsApi(admin)
                .get_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", "wrong-modules")
                .get("status", {})
            )
            return status if status.get("phase") == "Failed" else None

        status = wait_for("Failed", failed, timeout=120)
        reason = next(c for c in status["conditions"] if c["type"] == "Failed")
        assert reason["reason"] == "ConfigurationError" and "q_prj" in reason["message"], reason

        def job_gone() -> bool:
            names = [j.metadata.name for j in BatchV1Api(admin).list_namespaced_job(namespace).items]
            return "wrong-modules-train" not in names

        wait_for("the training Job deleted", job_gone, timeout=120)
    finally:
        operator.stop()
