"""End to end on a real node, with pods taken away: the node drained mid-training evicts the trainer pod,
which checkpoints on SIGTERM, and once the node is back the Job's next pod resumes from there; the operator
pod deleted while an AdapterDeployment rolls out is replaced by its Deployment, and the new one finishes the
rollout; the engine pod deleted after that is replaced and gets its adapter back."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.chart.rendering import NAMESPACE as OPERATOR_NAMESPACE
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
from tests.node.freezing import container_running, frozen, pod_processes, sigterm_pending
from tests.support.adapters import make_lora_adapter, reference_generate
from tests.support.checkpoints import complete_steps
from tests.support.kubelet import wait_for
from tests.support.real_node import RealNode

pytestmark = pytest.mark.node
POD_RESOURCES = {"gpus": 0, "cpu": "1", "memory": "3Gi"}
PROMPT, MAX_TOKENS = "Say the word number 5:", 6
MAX_STEPS = 160  # the rest of the run must outlast the moment between the first checkpoint and the freeze


def _running_trainer(node: RealNode, namespace: str, job: str) -> dict[str, Any] | None:
    pods = items(node, "pod", namespace, f"peft.dev/finetunejob={job}")
    running = [p for p in pods if container_running(p)]
    return running[0] if len(pods) == 1 and running else None


def test_node_drained_mid_training_the_trainer_resumes_from_its_checkpoint(node: RealNode, tenant: Tenant) -> None:
    namespace, job = tenant.namespace, "tiny-resume"
    training = {"maxSteps": MAX_STEPS, "batchSize": 8, "learningRate": "1e-2", "checkpointEvery": 8}
    create_finetunejob(node, namespace, job, training=training, resources=POD_RESOURCES)
    output = tenant.claim_dir("team-adapters") / job
    first = wait_for("the trainer container running", lambda: _running_trainer(node, namespace, job), timeout=600)
    trainer = pod_processes(node, [first])  # one process (no torchrun): found before the race begins
    wait_for("a complete checkpoint on the claim", lambda: complete_steps(output), timeout=600, interval=0.05)
    # Held still until the kubelet's SIGTERM is pending, so the drain surely finds it mid-run.
    drain = ["drain", "peft-node", f"--pod-selector=peft.dev/finetunejob={job}", "--delete-emptydir-data"]
    with ThreadPoolExecutor(1) as pool:
        with frozen(trainer) as processes:
            assert complete_steps(output)[-1] < MAX_STEPS
            # Through the Eviction API, waiting for the pod to be gone; the only node then takes pods again.
            drained = pool.submit(node.kubectl, *drain, "--ignore-daemonsets", "--timeout=300s", timeout=320)
            wait_for("the kubelet's SIGTERM at the trainer", lambda: sigterm_pending(processes), timeout=120)
        drained.result()
    node.kubectl("uncordon", "peft-node")

    done = wait_phase(node, "finetunejob", job, namespace, "Succeeded", timeout=900)
    assert done["status"]["progress"]["step"] == MAX_STEPS
    pods = items(node, "pod", namespace, f"peft.dev/finetunejob={job}")
    second = [p for p in pods if p["metadata"]["name"] != first["metadata"]["name"]]
    assert [p["status"]["phase"] for p in second] == ["Succeeded"], [p["metadata"]["name"] for p in pods]
    log = node.kubectl("logs", "-n", namespace, second[0]["metadata"]["name"]).stdout
    assert "Resuming from step-" in log, log[-3000:]


def _operator_pods(node: RealNode) -> list[dict[str, Any]]:
    pods = items(node, "pod", OPERATOR_NAMESPACE, "app.kubernetes.io/name=peft-operator")
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def test_operator_pod_then_engine_pod_deleted_both_come_back(node: RealNode, tenant: Tenant) -> None:
    namespace, name, adapter_name = tenant.namespace, "failover", "tenant-b-bot"
    model_dir = tenant.claim_dir("models") / "tiny"
    adapter = make_lora_adapter(
        model_dir, tenant.claim_dir("team-adapters") / "made" / adapter_name, seed=5, uri="pvc://models/tiny"
    )
    tenant.open_to_pods()
    create_object(
        node,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "AdapterDeployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "baseModel": {"uri": "pvc://models/tiny"},
                "runtime": {"engine": "builtin", "replicas": 1, "resources": POD_RESOURCES},
                "adapters": [
                    {
                        "name": adapter_name,
                        "source": {"uri": f"pvc://team-adapters/made/{adapter_name}", "sha256": adapter.sha256},
                    }
                ],
            },
        },
    )
    selector = f"peft.dev/adapterdeployment={name}"
    wait_for("the engine pod", lambda: items(node, "pod", namespace, selector), timeout=120)
    (old,) = _operator_pods(node)
    node.kubectl("delete", "pod", "-n", OPERATOR_NAMESPACE, old["metadata"]["name"], "--wait=false")

    def loaded() -> dict[str, Any] | None:
        status = get(node, "adapterdeployment", name, namespace).get("status") or {}
        entry = next((a for a in status.get("adapters", []) if a["name"] == adapter_name), None)
        return status if entry and entry["state"] == "Loaded" and status.get("readyReplicas") == 1 else None

    try:
        wait_for("the rollout finished by the new operator pod", loaded, timeout=600, interval=2)
        (new,) = _operator_pods(node)
        assert new["metadata"]["name"] != old["metadata"]["name"]
        (svc,) = items(node, "service", namespace, selector)
        wait_for_service(node, svc["spec"]["clusterIP"], 8000)
        expected = reference_generate(model_dir, adapter.path, [PROMPT], MAX_TOKENS)[0]
        answer = _complete(node, svc["spec"]["clusterIP"], adapter_name)
        assert answer is not None and answer["model"] == adapter_name
        assert answer["choices"][0]["text"] == expected

        # The engine pod deleted: its Deployment makes a new one, which starts with no adapter; the operator
        # loads it again through the new pod's agent.
        (engine,) = items(node, "pod", namespace, selector)
        node.kubectl("delete", "pod", "-n", namespace, engine["metadata"]["name"], "--wait=true", timeout=180)
        again = wait_for(
            "the adapter answering from the new engine pod",
            lambda: _complete(node, svc["spec"]["clusterIP"], adapter_name),
            timeout=600,
            interval=2,
        )
        assert again["choices"][0]["text"] == expected
        (replacement,) = items(node, "pod", namespace, selector)
        assert replacement["metadata"]["name"] != engine["metadata"]["name"]
    finally:  # the node has 2 CPUs: free the engine's for the next test's pods
        node.kubectl("delete", "adapterdeployment", "-n", namespace, name, "--wait=true", timeout=180)


def _complete(node: RealNode, service_ip: str, model: str) -> dict[str, Any] | None:
    """A greedy completion through the Service; None while it cannot answer (no ready pod, adapter not loaded)."""
    body = {"model": model, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0}
    try:
        return http_in_node(node, "POST", f"http://{service_ip}:8000/v1/completions", body)
    except AssertionError:
        return None
