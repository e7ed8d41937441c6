"""End to end on a real node: the README's story with nothing played by the test. The chart installs the
operator from its image; a FineTuneJob trains a tiny model in a trainer pod from the runtime image (base
model, dataset and output on claims); an AdapterDeployment's engine pod hot-loads the adapter through its
agent; a completion through the engine's Service answers with the adapter."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from tests.node.cluster import GROUP, VERSION, Tenant, get, http_in_node, items, wait_phase
from tests.node.cluster import create as create_object
from tests.support.kubelet import wait_for
from tests.support.real_node import RealNode
from tests.support.tiny_model import build_tiny_llama

pytestmark = pytest.mark.node
JOB, ADAPTER, DEPLOYMENT = "tiny-lora", "tenant-a-bot", "tiny-shared"
PROMPT = "Say the word number 3:"
# Small pods: the node has 2 CPUs, the operator holds 100m of them.
POD_RESOURCES = {"gpus": 0, "cpu": "1", "memory": "3Gi"}


def _fill_claims(tenant: Tenant) -> None:
    build_tiny_llama(tenant.claim_dir("models") / "tiny")
    rows = [{"prompt": f"Say the word number {i}:", "completion": f" word{i % 7} done"} for i in range(64)]
    (tenant.claim_dir("team-data") / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tenant.open_to_pods()


def _finetunejob(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": JOB, "namespace": namespace},
        "spec": {
            "baseModel": {"uri": "pvc://models/tiny"},
            "dataset": {"uri": "pvc://team-data/train.jsonl", "format": "instruction"},
            "method": {"type": "lora", "lora": {"r": 4, "alpha": 8, "targetModules": ["q_proj", "v_proj"]}},
            "training": {"maxSteps": 24, "batchSize": 8, "learningRate": "1e-2", "checkpointEvery": 8},
            "resources": POD_RESOURCES,
            "output": {"uri": f"pvc://team-adapters/{JOB}"},
        },
    }


def _adapterdeployment(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AdapterDeployment",
        "metadata": {"name": DEPLOYMENT, "namespace": namespace},
        "spec": {
            "baseModel": {"uri": "pvc://models/tiny"},
            "runtime": {"engine": "builtin", "replicas": 1, "resources": POD_RESOURCES},
            "adapters": [{"name": ADAPTER, "source": {"fineTuneJobRef": {"name": JOB}}}],
        },
    }


def _adapter_loaded(node: RealNode, namespace: str) -> dict[str, Any] | None:
    status = get(node, "adapterdeployment", DEPLOYMENT, namespace).get("status") or {}
    entry = next((a for a in status.get("adapters", []) if a["name"] == ADAPTER), None)
    return status if entry and entry["state"] == "Loaded" and status.get("readyReplicas") == 1 else None


def _complete(node: RealNode, service_ip: str, model: str) -> dict[str, Any]:
    body = {"model": model, "prompt": PROMPT, "max_tokens": 6, "temperature": 0}
    return http_in_node(node, "POST", f"http://{service_ip}:8000/v1/completions", body)


def test_trained_in_a_pod_served_through_the_service(node: RealNode, tenant: Tenant) -> None:
    namespace = tenant.namespace
    _fill_claims(tenant)
    create_object(node, _finetunejob(namespace))
    done = wait_phase(node, "finetunejob", JOB, namespace, "Succeeded", timeout=900)

    trainer = items(node, "pod", namespace, f"peft.dev/finetunejob={JOB}")
    assert [p["status"]["phase"] for p in trainer] == ["Succeeded"], "one trainer pod, run to completion"
    assert trainer[0]["spec"]["nodeName"] == "peft-node"
    manifest = tenant.claim_dir("team-adapters") / JOB / "manifest.json"
    adapter = done["status"]["adapter"]
    assert adapter["uri"] == f"pvc://team-adapters/{JOB}"
    assert adapter["sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest(), "status names the files written"
    assert done["status"]["progress"]["step"] == 24

    create_object(node, _adapterdeployment(namespace))
    status = wait_for("the adapter Loaded on a ready replica", lambda: _adapter_loaded(node, namespace), 600, 2)
    assert next(a for a in status["adapters"] if a["name"] == ADAPTER)["digest"] == adapter["sha256"]

    service = items(node, "service", namespace, f"peft.dev/adapterdeployment={DEPLOYMENT}")
    assert len(service) == 1, [s["metadata"]["name"] for s in service]
    service_ip = service[0]["spec"]["clusterIP"]
    models = http_in_node(node, "GET", f"http://{service_ip}:8000/v1/models")["data"]
    served = {m["id"]: m.get("parent") for m in models}
    base = next(name for name, parent in served.items() if parent is None)
    assert served[ADAPTER] == base, served

    with_adapter = _complete(node, service_ip, ADAPTER)
    without = _complete(node, service_ip, base)
    assert with_adapter["model"] == ADAPTER
    assert with_adapter["choices"][0]["text"] != without["choices"][0]["text"], (with_adapter, without)
