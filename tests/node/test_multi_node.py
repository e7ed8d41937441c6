"""Training on several nodes, for real on the one node here: a FineTuneJob with `resources.nodes: 2` becomes an
Indexed Job whose two pods find each other through the headless Service's DNS (CoreDNS) and torchrun's c10d
rendezvous on pod 0, and train as one run of 2 processes (gloo over the pod network). One pod deleted mid-run:
the other's torchrun restarts its worker, both meet again with the Job's replacement pod, and the run resumes
from the newest checkpoint. The adapter equals the one a single process trains on the same global batch
(batchSize 4 x 2 processes = batchSize 4 x gradientAccumulation 2), within a stated tolerance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.node.cluster import Tenant, create_finetunejob, get, items, wait_phase
from tests.node.freezing import container_id, container_running, frozen, sigterm_pending
from tests.runtime.builders import make_plan, run_training
from tests.support.adapters import assert_same_adapter
from tests.support.checkpoints import complete_steps
from tests.support.kubelet import wait_for
from tests.support.real_node import RealNode

pytestmark = pytest.mark.node
JOB, MAX_STEPS = "tiny-two-nodes", 32
TRAINERS = f"peft.dev/finetunejob={JOB},app.kubernetes.io/component=trainer"
# The gradients are summed across the pods (another float summation order than one process's) and the
# run is interrupted and resumed on the way: 1e-3 of each tensor's largest value.
RELATIVE_TOLERANCE = 1e-3
LORA = {"type": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "targetModules": ["q_proj", "v_proj"]}}
TRAINING = {"maxSteps": MAX_STEPS, "batchSize": 4, "learningRate": "1e-2", "checkpointEvery": 4, "maxSeqLength": 64}
VALIDATION_SPLIT = 0.1


def _index(pod: dict[str, Any]) -> int:
    return int(pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"])


def _running_pods(node: RealNode, namespace: str) -> list[dict[str, Any]] | None:
    pods = [p for p in items(node, "pod", namespace, TRAINERS) if not p["metadata"].get("deletionTimestamp")]
    running = [p for p in pods if container_running(p)]
    return sorted(running, key=_index) if len(running) == 2 else None


def _training_processes(node: RealNode, pods: list[dict[str, Any]]) -> list[int] | None:
    """Both pods' processes once each has its torchrun and its trainer worker (the worker starts after the
    rendezvous), so that nothing slow stands between the first checkpoint and the freeze."""
    processes = [node.container_processes(container_id(pod)) for pod in pods]
    return [pid for pod in processes for pid in pod] if all(len(pod) >= 2 for pod in processes) else None


def test_two_pods_train_as_one_run_and_survive_losing_one(node: RealNode, tenant: Tenant, tmp_path: Path) -> None:
    namespace = tenant.namespace
    tenant.open_to_pods()
    create_finetunejob(
        node,
        namespace,
        JOB,
        dataset={"uri": "pvc://team-data/train.jsonl", "format": "instruction", "validationSplit": VALIDATION_SPLIT},
        method=LORA,
        training=TRAINING,
        resources={"gpus": 0, "nodes": 2, "cpu": "500m", "memory": "2Gi"},
    )
    output = tenant.claim_dir("team-adapters") / JOB
    first = wait_for("both trainer pods running", lambda: _running_pods(node, namespace), timeout=600, interval=1)
    processes = wait_for("both ranks started", lambda: _training_processes(node, first), timeout=600, interval=0.2)
    pod_1 = node.container_processes(container_id(first[1]))
    wait_for("a complete checkpoint on the claim", lambda: complete_steps(output), timeout=600, interval=0.05)
    # Both held still (a fast CPU would otherwise finish first) until pod 1 has the kubelet's SIGTERM.
    with frozen(processes):
        assert complete_steps(output)[-1] < MAX_STEPS
        node.kubectl("delete", "pod", "-n", namespace, first[1]["metadata"]["name"], "--wait=false")
        wait_for("the kubelet's SIGTERM at pod 1", lambda: sigterm_pending(pod_1), timeout=120)

    done = wait_phase(node, "finetunejob", JOB, namespace, "Succeeded", timeout=900)
    progress = done["status"]["progress"]
    assert (progress["step"], progress["processes"]) == (MAX_STEPS, 2), progress
    pods = items(node, "pod", namespace, TRAINERS)
    phases = {p["metadata"]["name"]: p["status"]["phase"] for p in pods}
    replacement = [p for p in pods if _index(p) == 1 and p["metadata"]["name"] != first[1]["metadata"]["name"]]
    # Pod 0 lived through it (torchrun restarted its worker); pod 1 was replaced once.
    assert phases.get(first[0]["metadata"]["name"]) == "Succeeded" and len(replacement) == 1, phases
    assert replacement[0]["status"]["phase"] == "Succeeded", phases
    log_0 = node.kubectl("logs", "-n", namespace, first[0]["metadata"]["name"]).stdout
    log_1 = node.kubectl("logs", "-n", namespace, replacement[0]["metadata"]["name"]).stdout
    assert "Rank 0 of 2" in log_0 and "Rank 1 of 2" in log_1, (log_0[-2000:], log_1[-2000:])
    assert "Resuming from step-" in log_0 and "Resuming from step-" in log_1, log_0[-3000:]
    assert get(node, "job", f"{JOB}-train", namespace)["spec"]["completionMode"] == "Indexed"
    assert get(node, "service", f"{JOB}-train", namespace)["spec"]["clusterIP"] == "None"
    # The node's claims are ReadWriteOnce: the operator warned of each (the pods shared them on this one node).
    events = node.kubectl(
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        f"involvedObject.name={JOB},reason=ClaimNotShared",
        "-o",
        "json",
    ).stdout
    warned = {e["message"].split(" is ")[0] for e in json.loads(events)["items"]}
    assert warned == {"claim models", "claim team-data", "claim team-adapters"}, events[-2000:]
    preflight = items(node, "pod", namespace, f"peft.dev/finetunejob={JOB},app.kubernetes.io/component=preflight")
    assert [p["status"]["phase"] for p in preflight] == ["Succeeded"], "checked on one CPU pod before the nodes"

    single = make_plan(
        model_dir=tenant.claim_dir("models") / "tiny",
        dataset_uri=(tenant.claim_dir("team-data") / "train.jsonl").as_uri(),
        output_uri=(tmp_path / "single").as_uri(),
        work_dir=tmp_path / "work",
        method=LORA,
        data_format="instruction",
        training={**TRAINING, "gradientAccumulation": 2},
        validation_split=VALIDATION_SPLIT,
    )
    assert run_training(single).exit_code == 0
    assert_same_adapter(tmp_path / "single", output, RELATIVE_TOLERANCE)
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["metrics"]["steps"] == MAX_STEPS
