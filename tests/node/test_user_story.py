"""End to end on a real node: the README's story with nothing played by the test. The chart installs the
operator from its image; a FineTuneJob trains a tiny model in a trainer pod from the runtime image (base
model, dataset and output on claims); an AdapterDeployment's engine pod hot-loads the adapter through its
agent; a completion through the engine's Service answers with the adapter. The trainer reports progress to
the operator's Service by its DNS name (CoreDNS on the node)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from tests.node.cluster import (
    GROUP,
    VERSION,
    Tenant,
    create_finetunejob,
    create_object,
    get,
    http_in_node,
    items,
    wait_for_service,
    wait_phase,
)
from tests.support.adapters import reference_generate
from tests.support.kubelet import wait_for
from tests.support.real_node import RealNode

pytestmark = pytest.mark.node
JOB, ADAPTER, DEPLOYMENT = "tiny-lora", "tenant-a-bot", "tiny-shared"
PROMPT = "Say the word number 3:"
MAX_TOKENS = 6
# Small pods: the node has 2 CPUs, the operator holds 100m of them.
POD_RESOURCES = {"gpus": 0, "cpu": "1", "memory": "3Gi"}


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
    body = {"model": model, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0}
    return http_in_node(node, "POST", f"http://{service_ip}:8000/v1/completions", body)


def test_trained_in_a_pod_served_through_the_service(node: RealNode, tenant: Tenant) -> None:
    namespace = tenant.namespace
    training = {"maxSteps": 24, "batchSize": 8, "learningRate": "1e-2", "checkpointEvery": 8}
    create_finetunejob(node, namespace, JOB, training=training, resources=POD_RESOURCES)
    done = wait_phase(node, "finetunejob", JOB, namespace, "Succeeded", timeout=900)
    # Only the trainer's preflight report, POSTed to the operator's Service by its cluster DNS name, carries
    # the dataset's figures (the termination message does not).
    assert done["status"]["dataset"]["rows"] == 64, done["status"]

    trainer = items(node, "pod", namespace, f"peft.dev/finetunejob={JOB}")
    assert [p["status"]["phase"] for p in trainer] == ["Succeeded"], "one trainer pod, run to completion"
    assert trainer[0]["spec"]["nodeName"] == "peft-node"
    manifest = tenant.claim_dir("team-adapters") / JOB / "manifest.json"
    adapter = done["status"]["adapter"]
    assert adapter["uri"] == f"pvc://team-adapters/{JOB}"
    assert adapter["sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest(), "status names the files written"
    assert done["status"]["progress"]["step"] == 24

    create_object(node, _adapterdeployment(namespace))
    try:
        _serve_and_ask(node, tenant, adapter["sha256"], manifest.parent)
    finally:  # the node has 2 CPUs: free the engine's for the next test's pods
        node.kubectl("delete", "adapterdeployment", "-n", namespace, DEPLOYMENT, "--wait=true", timeout=180)


def _serve_and_ask(node: RealNode, tenant: Tenant, digest: str, adapter_dir: Path) -> None:
    namespace = tenant.namespace
    status = wait_for("the adapter Loaded on a ready replica", lambda: _adapter_loaded(node, namespace), 600, 2)
    assert next(a for a in status["adapters"] if a["name"] == ADAPTER)["digest"] == digest

    service = items(node, "service", namespace, f"peft.dev/adapterdeployment={DEPLOYMENT}")
    assert len(service) == 1, [s["metadata"]["name"] for s in service]
    service_ip = service[0]["spec"]["clusterIP"]
    wait_for_service(node, service_ip, 8000)
    models = http_in_node(node, "GET", f"http://{service_ip}:8000/v1/models")["data"]
    served = {m["id"]: m.get("parent") for m in models}
    base = next(name for name, parent in served.items() if parent is None)
    assert served[ADAPTER] == base, served

    # The same greedy texts as peft's own generate: with the adapter files the trainer pod wrote, and without.
    model_dir = tenant.claim_dir("models") / "tiny"
    with_adapter = _complete(node, service_ip, ADAPTER)
    assert with_adapter["model"] == ADAPTER
    assert with_adapter["choices"][0]["text"] == reference_generate(model_dir, adapter_dir, [PROMPT], MAX_TOKENS)[0]
    assert (
        _complete(node, service_ip, base)["choices"][0]["text"]
        == reference_generate(model_dir, None, [PROMPT], MAX_TOKENS)[0]
    )
