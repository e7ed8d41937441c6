"""Integration: two operator replicas with leader election on the real apiserver: one acts, and when it
dies the other takes over."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from kubernetes.client import ApiClient, BatchV1Api, CoordinationV1Api, CustomObjectsApi

from tests.support.controlplane import REPO_ROOT, ControlPlane
from tests.support.kubelet import wait_for
from tests.support.operator_process import OperatorProcess, chart_rules, operator_kubeconfig

pytestmark = pytest.mark.integration
LEASE_RULES = yaml.safe_load((REPO_ROOT / "charts/peft-operator/files/leader-election-rules.yaml").read_text())


def _finetunejob(namespace: str, name: str) -> dict:  # type: ignore[type-arg]
    body = yaml.safe_load((REPO_ROOT / "examples/finetunejob-lora.yaml").read_text())
    body["metadata"].update(name=name, namespace=namespace)
    return body  # type: ignore[no-any-return]


def test_only_the_lease_holder_acts_and_the_other_takes_over(
    controller_manager: ControlPlane, crds_installed: list[str], admin: ApiClient, namespace: str, tmp_path: Path
) -> None:
    kubeconfig = operator_kubeconfig(controller_manager, rules=chart_rules() + LEASE_RULES, role="peft-operator-ha")
    election = {"PEFT_LEADER_ELECTION_NAMESPACE": namespace, "PEFT_LEASE_NAME": "peft-operator"}
    first = OperatorProcess(kubeconfig, tmp_path / "first.log", **election).start()
    wait_for("the first replica to hold the Lease", lambda: "Acquired Lease" in first.log_text())
    second = OperatorProcess(kubeconfig, tmp_path / "second.log", **election).start()
    try:
        custom, batch = CustomObjectsApi(admin), BatchV1Api(admin)
        custom.create_namespaced_custom_object(
            "peft.dev", "v1alpha1", namespace, "finetunejobs", _finetunejob(namespace, "one")
        )
        wait_for("the first job's Job", lambda: batch.list_namespaced_job(namespace).items)
        time.sleep(3)  # give a wrongly active standby the chance to show itself
        assert "Created Job" in first.log_text()
        assert "Created Job" not in second.log_text() and "Acquired Lease" not in second.log_text()
        holder = CoordinationV1Api(admin).read_namespaced_lease("peft-operator", namespace).spec.holder_identity

        first.kill()
        wait_for("the standby to take over", lambda: "Acquired Lease" in second.log_text(), timeout=60)
        lease = CoordinationV1Api(admin).read_namespaced_lease("peft-operator", namespace).spec
        assert lease.holder_identity != holder and lease.lease_transitions == 1
        custom.create_namespaced_custom_object(
            "peft.dev", "v1alpha1", namespace, "finetunejobs", _finetunejob(namespace, "two")
        )
        wait_for(
            "the second job's Job from the new leader",
            lambda: "two-train" in {j.metadata.name for j in batch.list_namespaced_job(namespace).items},
        )
        assert {j.metadata.name for j in batch.list_namespaced_job(namespace).items} == {"one-train", "two-train"}

        # A clean stop (SIGTERM, as in a rolling update) hands the Lease over at once, not after it expires.
        third = OperatorProcess(kubeconfig, tmp_path / "third.log", **election).start()
        try:
            second.stop()
            assert "Released Lease" in second.log_text()
            wait_for("the third replica to take over", lambda: "Acquired Lease" in third.log_text(), timeout=10)
        finally:
            third.stop()
    finally:
        first.stop()
        second.stop()
