"""Integration: FineTuneJobs admitted by real Kueue (v0.17.0, built from its Go module) against the real
kube-apiserver: a ClusterQueue with room for one GPU job, a LocalQueue named by the job's spec.queue.

kube-controller-manager runs the Job controller; the tests play the kubelet. Kueue, not the test,
unsuspends the Jobs (tests/support/kueue.py says what it takes to run it against a bare apiserver)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient, BatchV1Api, CustomObjectsApi

from tests.integration.conftest import _in_ci
from tests.support import kubelet
from tests.support.controlplane import REPO_ROOT, ControlPlane
from tests.support.kubelet import wait_for
from tests.support.kueue import Kueue, KueueMissing, ensure_kueue
from tests.support.operator_process import OperatorProcess
from tests.support.secrets import create_referenced_secrets

pytestmark = pytest.mark.integration
KUEUE_GROUP, KUEUE_VERSION = "kueue.x-k8s.io", "v1beta2"
QUEUE = "gpu-small"  # examples/finetunejob-qlora.yaml's spec.queue.name


@pytest.fixture(scope="module")
def kueue(
    controller_manager: ControlPlane, crds_installed: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Kueue]:
    try:
        kueue_dir = ensure_kueue()
    except KueueMissing as e:
        if _in_ci():
            pytest.fail(f"CI is set and Kueue cannot be built: {e}", pytrace=False)
        pytest.skip(str(e))
    process = Kueue(controller_manager, kueue_dir, tmp_path_factory.mktemp("kueue")).start()
    yield process
    process.stop()
    print(f"\n--- kueue log tail ---\n{process.log_tail(20)}")


def _queues(namespace: str, cluster_queue: str, gpus: int = 1) -> list[dict[str, Any]]:
    """Room for `gpus` GPUs (cpu and memory plentiful, so only the GPU quota decides)."""
    return [
        {"apiVersion": f"{KUEUE_GROUP}/{KUEUE_VERSION}", "kind": "ResourceFlavor", "metadata": {"name": "default"}},
        {
            "apiVersion": f"{KUEUE_GROUP}/{KUEUE_VERSION}",
            "kind": "ClusterQueue",
            "metadata": {"name": cluster_queue},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "resourceGroups": [
                    {
                        "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                        "flavors": [
                            {
                                "name": "default",
                                "resources": [
                                    {"name": "cpu", "nominalQuota": "100"},
                                    {"name": "memory", "nominalQuota": "1000Gi"},
                                    {"name": "nvidia.com/gpu", "nominalQuota": str(gpus)},
                                ],
                            }
                        ],
                    }
                ],
            },
        },
        {
            "apiVersion": f"{KUEUE_GROUP}/{KUEUE_VERSION}",
            "kind": "LocalQueue",
            "metadata": {"name": QUEUE, "namespace": namespace},
            "spec": {"clusterQueue": cluster_queue},
        },
    ]


def _create_job(admin: ApiClient, namespace: str, name: str) -> None:
    body = yaml.safe_load((REPO_ROOT / "examples" / "finetunejob-qlora.yaml").read_text())
    body["metadata"].update({"name": name, "namespace": namespace})
    create_referenced_secrets(admin, namespace, body)
    CustomObjectsApi(admin).create_namespaced_custom_object("peft.dev", "v1alpha1", namespace, "finetunejobs", body)


def _phase(admin: ApiClient, namespace: str, name: str) -> str | None:
    obj = CustomObjectsApi(admin).get_namespaced_custom_object("peft.dev", "v1alpha1", namespace, "finetunejobs", name)
    return (obj.get("status") or {}).get("phase")  # type: ignore[no-any-return]


def _training_job(admin: ApiClient, namespace: str, name: str) -> Any:
    jobs = BatchV1Api(admin).list_namespaced_job(namespace, label_selector=f"peft.dev/finetunejob={name}").items
    return jobs[0] if jobs else None


def _admitted(admin: ApiClient, namespace: str, name: str) -> bool:
    job = _training_job(admin, namespace, name)
    return job is not None and job.spec.suspend is False


def _pending_for_quota(admin: ApiClient, namespace: str, job_name: str) -> dict[str, Any] | None:
    """The job's Workload once Kueue has tried and failed to reserve quota for it."""
    workloads = CustomObjectsApi(admin).list_namespaced_custom_object(
        KUEUE_GROUP, KUEUE_VERSION, namespace, "workloads"
    )["items"]
    for workload in workloads:
        owners = {ref["name"] for ref in workload["metadata"].get("ownerReferences") or []}
        conditions = (workload.get("status") or {}).get("conditions") or []
        if job_name in owners and any(c["type"] == "QuotaReserved" and c["status"] == "False" for c in conditions):
            return workload  # type: ignore[no-any-return]
    return None


def _run_trainer_pod(admin: ApiClient, namespace: str, name: str) -> Any:
    pod = wait_for(
        f"a trainer pod of {name}", lambda: kubelet.pods_of(admin, namespace, f"peft.dev/finetunejob={name}")
    )
    kubelet.set_running(admin, pod[0])
    return pod[0]


def test_kueue_admits_one_job_within_quota_and_the_next_when_the_first_finishes(
    kueue: Kueue, operator: OperatorProcess, admin: ApiClient, namespace: str
) -> None:
    kueue.apply(*_queues(namespace, f"cq-{namespace}"))
    try:
        _create_job(admin, namespace, "first")
        wait_for("Kueue to admit (unsuspend) the first Job", lambda: _admitted(admin, namespace, "first"), 60)
        first_pod = _run_trainer_pod(admin, namespace, "first")
        wait_for("first to be Running", lambda: _phase(admin, namespace, "first") == "Running", 60)

        _create_job(admin, namespace, "second")
        wait_for("second to be Queued", lambda: _phase(admin, namespace, "second") == "Queued", 60)
        second_job = wait_for("the second Job", lambda: _training_job(admin, namespace, "second"))
        workload = wait_for(
            "Kueue to find no quota for the second Job",
            lambda: _pending_for_quota(admin, namespace, second_job.metadata.name),
            60,
        )
        assert _training_job(admin, namespace, "second").spec.suspend is True, workload
        assert kubelet.pods_of(admin, namespace, "peft.dev/finetunejob=second") == []

        # The first trainer exits: its Job completes, Kueue releases the GPU and admits the second.
        kubelet.set_terminated(admin, first_pod, 0, "Completed")
        wait_for("Kueue to admit the second Job", lambda: _admitted(admin, namespace, "second"), 90)
        _run_trainer_pod(admin, namespace, "second")
        wait_for("second to be Running", lambda: _phase(admin, namespace, "second") == "Running", 60)
    finally:
        # Before Kueue stops: its Workload finalizer would hold the Jobs' foreground deletion.
        BatchV1Api(admin).delete_collection_namespaced_job(namespace, propagation_policy="Background")


def test_kueue_admits_a_multi_node_job_whole_or_not_at_all(
    kueue: Kueue, operator: OperatorProcess, admin: ApiClient, namespace: str
) -> None:
    """nodes: 2 x gpus: 1 is one Workload of 2 pods: with room for one GPU Kueue starts none of them (a lone
    rank would wait in the rendezvous holding its GPU); with room for two it admits both, which the Job
    controller creates as indexes 0 and 1 under the headless Service."""
    cluster_queue = f"cq-{namespace}"
    kueue.apply(*_queues(namespace, cluster_queue))
    try:
        body = yaml.safe_load((REPO_ROOT / "examples" / "finetunejob-qlora.yaml").read_text())
        body["metadata"].update({"name": "two-nodes", "namespace": namespace})
        body["spec"]["resources"] = {"gpus": 1, "nodes": 2}
        create_referenced_secrets(admin, namespace, body)
        CustomObjectsApi(admin).create_namespaced_custom_object("peft.dev", "v1alpha1", namespace, "finetunejobs", body)
        job = wait_for("the training Job", lambda: _training_job(admin, namespace, "two-nodes"))
        assert (job.spec.completion_mode, job.spec.parallelism) == ("Indexed", 2)
        wait_for(
            "Kueue to find no quota for 2 GPUs", lambda: _pending_for_quota(admin, namespace, job.metadata.name), 60
        )
        assert _phase(admin, namespace, "two-nodes") == "Queued"
        assert kubelet.pods_of(admin, namespace, "peft.dev/finetunejob=two-nodes") == [], "no pod starts alone"

        kueue.apply(*_queues(namespace, cluster_queue, gpus=2))
        wait_for("Kueue to admit both pods", lambda: _admitted(admin, namespace, "two-nodes"), 90)
        pods = wait_for(
            "both pods",
            lambda: p if len(p := kubelet.pods_of(admin, namespace, "peft.dev/finetunejob=two-nodes")) == 2 else None,
        )
        assert sorted(p.spec.hostname for p in pods) == ["two-nodes-train-0", "two-nodes-train-1"]
        assert {p.spec.subdomain for p in pods} == {"two-nodes-train"}
    finally:
        BatchV1Api(admin).delete_collection_namespaced_job(namespace, propagation_policy="Background")
