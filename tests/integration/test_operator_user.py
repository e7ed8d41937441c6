"""Integration: the operator runs as its image runs it, as uid 65532 with no passwd entry and no USER, LOGNAME
or HOME (Kopf's default identity comes from the passwd database and crashed there), and still reconciles."""

from __future__ import annotations

import pwd
from pathlib import Path

import pytest
import yaml
from kubernetes.client import ApiClient, BatchV1Api, CustomObjectsApi

from tests.support.controlplane import REPO_ROOT, ControlPlane
from tests.support.kubelet import wait_for
from tests.support.operator_process import OperatorProcess, operator_kubeconfig

pytestmark = pytest.mark.integration
IMAGE_UID = 65532  # operator/Dockerfile: USER 65532:65532


def test_operator_without_a_passwd_entry_starts_and_creates_the_training_job(
    controller_manager: ControlPlane, crds_installed: list[str], admin: ApiClient, namespace: str, tmp_path: Path
) -> None:
    with pytest.raises(KeyError):  # else the test would prove nothing on this machine
        pwd.getpwuid(IMAGE_UID)
    kubeconfig = operator_kubeconfig(controller_manager, role="peft-operator-uid")
    operator = OperatorProcess(kubeconfig, tmp_path / "operator.log", run_as=IMAGE_UID).start()
    try:
        body = yaml.safe_load((REPO_ROOT / "examples/finetunejob-lora.yaml").read_text())
        body["metadata"].update(name="as-image-user", namespace=namespace)
        CustomObjectsApi(admin).create_namespaced_custom_object("peft.dev", "v1alpha1", namespace, "finetunejobs", body)
        wait_for(
            "the operator (uid 65532) to create the training Job",
            lambda: any(
                j.metadata.name == "as-image-user-train" for j in BatchV1Api(admin).list_namespaced_job(namespace).items
            ),
            timeout=60,
        )
        assert operator.alive(), operator.log_tail()
        assert "getpwuid" not in operator.log_text()
    finally:
        operator.stop()
