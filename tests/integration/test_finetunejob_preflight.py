"""Integration: the CPU-only preflight step before GPUs. For a job that requests a GPU the operator first
creates `<name>-preflight` (no GPU requested); the real `peft-runtime preflight` runs as that pod's command
on the tiny model. Wrong target modules fail there, naming the model's real modules, and no training Job
(no GPU) is ever created; right ones pass, the dataset report reaches status, and only then does the GPU
Job appear. The operator runs with PEFT_PREFLIGHT=gpu, its default."""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def operator_with_preflight(
    controller_manager: ControlPlane, crds_installed: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    kubeconfig = operator_kubeconfig(controller_manager, role="peft-operator-preflight")
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    process = OperatorProcess(kubeconfig, log, PEFT_PREFLIGHT="gpu").start()
    yield process
    process.stop()
    print(f"\n--- operator log tail ---\n{process.log_tail(40)}")


@pytest.fixture(scope="module")
def pvc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pvc")  # how the claims appear to the pod: <root>/<claim>/<path>
    build_tiny_llama(root / "models" / "tiny")
    rows = [{"prompt": f"Say the word number {i}:", "completion": f" word{i % 7} done"} for i in range(40)]
    (root / "team-data").mkdir()
    (root / "team-data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _create(admin: ApiClient, namespace: str, name: str, target_modules: list[str]) -> None:
    body = yaml.safe_load((REPO_ROOT / "examples/finetunejob-lora.yaml").read_text())
    body["metadata"] = {"name": name, "namespace": namespace}
    body["spec"].update(
        baseModel={"uri": "pvc://models/tiny"},
        dataset={"uri": "pvc://team-data/train.jsonl", "format": "instruction"},
        method={"type": "lora", "lora": {"r": 4, "targetModules": target_modules}},
        resources={"gpus": 1},
        output={"uri": f"pvc://team-adapters/{name}"},
    )
    CustomObjectsApi(admin).create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", body)


def _status(admin: ApiClient, namespace: str, name: str) -> dict[str, Any]:
    body = CustomObjectsApi(admin).get_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", name)
    return body.get("status") or {}  # type: ignore[no-any-return]


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), None)


def _jobs(admin: ApiClient, namespace: str) -> dict[str, Any]:
    return {j.metadata.name: j for j in BatchV1Api(admin).list_namespaced_job(namespace).items}


def _events(admin: ApiClient, namespace: str, name: str) -> dict[str, tuple[str, str]]:
    events = CoreV1Api(admin).list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
    return {e.reason: (e.type, e.message) for e in events}


def test_wrong_target_modules_fail_in_preflight_listing_the_real_ones_and_no_gpu_job_exists(
    operator_with_preflight: OperatorProcess, admin: ApiClient, namespace: str, pvc_root: Path, tmp_path: Path
) -> None:
    _create(admin, namespace, "typo", ["q_proj", "query_key_value"])
    pod = LocalTrainerPod.of_job(admin, namespace, "typo-preflight", pvc_root, tmp_path / "preflight")
    # The operator writes the status after it creates the preflight Job: wait for it, never read it at once.
    wait_for("typo: Pending", lambda: _status(admin, namespace, "typo").get("phase") == "Pending")
    limits = pod.pod.spec.containers[0].resources.limits or {}
    assert not any("gpu" in key for key in limits), limits
    assert "typo-train" not in _jobs(admin, namespace)
    result = pod.run()
    assert result.returncode == 3, result.stderr[-2000:]

    status = wait_for("typo: Failed", lambda: (s := _status(admin, namespace, "typo")).get("phase") == "Failed" and s)
    failed = _condition(status, "PreflightPassed")
    assert failed is not None and failed["status"] == "False" and failed["reason"] == "ConfigurationError"
    message = failed["message"]
    assert message.startswith("The preflight (Job typo-preflight) failed, so no GPU was requested:")
    assert "it has no module named query_key_value" in message
    assert "Its linear modules are: down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj" in message
    assert wait_for("a Warning Event", lambda: _events(admin, namespace, "typo").get("ConfigurationError")) == (
        "Warning",
        message,
    )
    assert "typo-train" not in _jobs(admin, namespace), "a failed preflight creates no GPU Job"


def test_a_passing_preflight_reports_the_dataset_then_creates_the_gpu_job(
    operator_with_preflight: OperatorProcess, admin: ApiClient, namespace: str, pvc_root: Path, tmp_path: Path
) -> None:
    _create(admin, namespace, "right", ["q_proj", "v_proj"])
    pod = LocalTrainerPod.of_job(admin, namespace, "right-preflight", pvc_root, tmp_path / "preflight")
    running = wait_for("the Preflight reason", lambda: _condition(_status(admin, namespace, "right"), "Running"))
    assert running["reason"] == "Preflight" and "before requesting GPUs" in running["message"]
    result = pod.run()
    assert result.returncode == 0, result.stderr[-2000:]

    training = wait_for("the GPU Job", lambda: _jobs(admin, namespace).get("right-train"), timeout=90)
    assert training.spec.template.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"
    passed = wait_for("PreflightPassed", lambda: _condition(_status(admin, namespace, "right"), "PreflightPassed"))
    assert passed["status"] == "True" and "lora wraps q_proj, v_proj" in passed["message"]
    assert _status(admin, namespace, "right")["dataset"]["usableRows"] == 40
    kind, message = wait_for("the Event", lambda: _events(admin, namespace, "right").get("PreflightPassed"))
    assert kind == "Normal" and message == passed["message"]
    assert "JobCreated" in wait_for("JobCreated", lambda: _events(admin, namespace, "right"))


def test_a_dpo_job_goes_through_preflight_training_and_its_eval_gate(
    operator_with_preflight: OperatorProcess, admin: ApiClient, namespace: str, pvc_root: Path, tmp_path: Path
) -> None:
    """Items together: the preflight checks the preference pairs on CPU, the GPU Job's pod (played on this
    CPU) trains with DPO, the reward metrics reach status, and the eval gate lets the adapter be deployed."""
    pairs = [
        {"prompt": f"Tell me about thing {i}.", "chosen": f" Thing {i} is good, thank you.", "rejected": " No."}
        for i in range(48)
    ]
    (pvc_root / "team-data" / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    shared = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AdapterDeployment",
        "metadata": {"name": "shared", "namespace": namespace},
        "spec": {"baseModel": {"uri": "pvc://models/tiny"}, "runtime": {"replicas": 0}},
    }
    CustomObjectsApi(admin).create_namespaced_custom_object(GROUP, VERSION, namespace, "adapterdeployments", shared)
    body = yaml.safe_load((REPO_ROOT / "examples/finetunejob-dpo.yaml").read_text())
    body["metadata"] = {"name": "prefers", "namespace": namespace}
    body["spec"].update(
        baseModel={"uri": "pvc://models/tiny"},
        dataset={"uri": "pvc://team-data/pairs.jsonl", "format": "preference"},
        method={"type": "lora", "lora": {"r": 8, "alpha": 16, "targetModules": ["q_proj", "v_proj", "o_proj"]}},
        training={"objective": "dpo", "dpo": {"beta": "0.1"}, "maxSteps": 10, "learningRate": "1e-2", "batchSize": 8},
        output={"uri": "pvc://team-adapters/prefers"},
        deploy={"adapterDeployment": "shared", "when": {"maxEvalLoss": "0.69", "minEvalRows": 4}},
    )
    CustomObjectsApi(admin).create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", body)
    preflight = LocalTrainerPod.of_job(admin, namespace, "prefers-preflight", pvc_root, tmp_path / "preflight")
    assert preflight.run().returncode == 0
    passed = wait_for("PreflightPassed", lambda: _condition(_status(admin, namespace, "prefers"), "PreflightPassed"))
    assert "48 of 48 rows usable" in passed["message"]

    trainer = LocalTrainerPod.of_job(admin, namespace, "prefers-train", pvc_root, tmp_path / "train")
    result = trainer.run()
    assert result.returncode == 0, result.stderr[-2000:]
    deployed = wait_for("Deployed", lambda: _condition(_status(admin, namespace, "prefers"), "Deployed"), timeout=90)
    progress = _status(admin, namespace, "prefers")["progress"]
    assert progress["evalRows"] == 5 and progress["rewardAccuracy"] == 1.0 and progress["rewardMargin"] > 0
    assert progress["evalLoss"] < 0.69, "below log 2: the adapter prefers the chosen answers more than the base does"
    assert deployed["status"] == "True" and deployed["reason"] == "AdapterAdded", deployed
