"""Integration: `spec.deploy.when`, the eval gate. The real trainer trains a tiny model for two jobs from
the plans the operator rendered; the one whose held-out loss and rows meet its gate is added to the
AdapterDeployment, the other is not, and its status and a Warning Event give the measured values. A gate
on a job that holds out no rows is refused by the apiserver (CEL) with the fix."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi
from kubernetes.client.rest import ApiException

from tests.support.controlplane import REPO_ROOT
from tests.support.kubelet import wait_for
from tests.support.operator_process import OperatorProcess
from tests.support.tiny_model import build_tiny_llama
from tests.support.trainer_pod import LocalTrainerPod

pytestmark = pytest.mark.integration
GROUP, VERSION = "peft.dev", "v1alpha1"
BASE = "pvc://models/tiny"


def _job(namespace: str, name: str, when: dict[str, Any], validation_split: float = 0.1) -> dict[str, Any]:
    body = yaml.safe_load((REPO_ROOT / "examples/finetunejob-lora.yaml").read_text())
    body["metadata"] = {"name": name, "namespace": namespace}
    body["spec"].update(
        baseModel={"uri": BASE},
        dataset={"uri": "pvc://team-data/train.jsonl", "format": "instruction", "validationSplit": validation_split},
        method={"type": "lora", "lora": {"r": 4, "alpha": 8, "targetModules": ["q_proj", "v_proj"]}},
        training={"maxSteps": 8, "batchSize": 8, "learningRate": "1e-2", "checkpointEvery": 8},
        resources={"gpus": 0},
        output={"uri": f"pvc://team-adapters/{name}"},
        deploy={"adapterDeployment": "shared", "when": when},
    )
    return body


def _create(admin: ApiClient, namespace: str, plural: str, body: dict[str, Any]) -> None:
    CustomObjectsApi(admin).create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)


def _get(admin: ApiClient, namespace: str, name: str, plural: str = "finetunejobs") -> dict[str, Any]:
    return CustomObjectsApi(admin).get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)  # type: ignore[no-any-return]


def _deployed(admin: ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    conditions = (_get(admin, namespace, name).get("status") or {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == "Deployed"), None)


def _warnings(admin: ApiClient, namespace: str, name: str) -> dict[str, str]:
    events = CoreV1Api(admin).list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
    return {e.reason: e.message for e in events if e.type == "Warning"}


def test_only_the_job_that_meets_its_eval_gate_is_deployed(
    operator: OperatorProcess, admin: ApiClient, namespace: str, tmp_path: Path
) -> None:
    pvc_root = tmp_path / "pvc"
    build_tiny_llama(pvc_root / "models" / "tiny")
    rows = [{"prompt": f"Say the word number {i}:", "completion": f" word{i % 7} done"} for i in range(64)]
    (pvc_root / "team-data").mkdir(parents=True)
    (pvc_root / "team-data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    shared = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AdapterDeployment",
        "metadata": {"name": "shared", "namespace": namespace},
        "spec": {"baseModel": {"uri": BASE}, "runtime": {"replicas": 0}},
    }
    _create(admin, namespace, "adapterdeployments", shared)
    _create(admin, namespace, "finetunejobs", _job(namespace, "loose", {"maxEvalLoss": "100", "minEvalRows": 6}))
    _create(admin, namespace, "finetunejobs", _job(namespace, "strict", {"maxEvalLoss": "0.001", "minEvalRows": 20}))

    pods = [
        LocalTrainerPod.of_job(admin, namespace, f"{name}-train", pvc_root, tmp_path / name)
        for name in ("loose", "strict")
    ]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda pod: pod.run(), pods))
    assert [r.returncode for r in results] == [0, 0], [r.stderr[-2000:] for r in results]

    added = wait_for(
        "loose: Deployed", lambda: (c := _deployed(admin, namespace, "loose")) and c["status"] == "True" and c
    )
    assert added["reason"] == "AdapterAdded"
    refused = wait_for("strict: Deployed=False", lambda: _deployed(admin, namespace, "strict"), timeout=90)
    progress = _get(admin, namespace, "strict")["status"]["progress"]
    assert progress["evalRows"] == 6 and progress["evalLoss"] > 0.001
    assert refused["status"] == "False" and refused["reason"] == "EvalGateNotMet"
    assert f"evalLoss {progress['evalLoss']:g} is above deploy.when.maxEvalLoss 0.001" in refused["message"]
    assert "measured on 6 held-out rows, fewer than deploy.when.minEvalRows 20" in refused["message"]
    warning = wait_for("a Warning Event", lambda: _warnings(admin, namespace, "strict").get("EvalGateNotMet"))
    assert warning == refused["message"]
    entries = _get(admin, namespace, "shared", "adapterdeployments")["spec"]["adapters"]
    assert [e["name"] for e in entries] == ["loose"], "the job that missed its gate is not served"


def test_a_gate_without_held_out_rows_is_refused_by_the_apiserver(admin: ApiClient, namespace: str) -> None:
    with pytest.raises(ApiException) as refused:
        _create(admin, namespace, "finetunejobs", _job(namespace, "no-eval", {"maxEvalLoss": "1.5"}, 0.0))
    assert refused.value.status == 422
    assert "deploy.when judges the held-out rows, and dataset.validationSplit is 0" in refused.value.body
