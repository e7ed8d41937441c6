"""Integration: Events that matter survive an operator killed at the worst moment. JobCreated is derived
from the state (the status does not name the Job yet), so a kill -9 between creating the Job and posting
the Event leaves the Event to the next operator, which finds the Job and announces it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kubernetes.client import ApiClient, BatchV1Api, CoreV1Api, CustomObjectsApi

from peft_operator import kube
from peft_operator.api import FineTuneJob
from peft_operator.finetunejob.job import render_training_job
from peft_operator.finetunejob.plan import render_plan_configmap
from peft_operator.finetunejob.secret import render_progress_secret
from peft_operator.settings import OperatorSettings
from tests.support.controlplane import REPO_ROOT, ControlPlane
from tests.support.kubelet import wait_for
from tests.support.operator_process import OperatorProcess, operator_kubeconfig

pytestmark = pytest.mark.integration
GROUP, VERSION = "peft.dev", "v1alpha1"


def test_job_created_is_posted_by_the_next_operator_after_a_kill_before_the_event(
    controller_manager: ControlPlane, crds_installed: list[str], admin: ApiClient, namespace: str, tmp_path: Path
) -> None:
    process = OperatorProcess(
        operator_kubeconfig(controller_manager, role="peft-operator-kill-events"),
        tmp_path / "operator.log",
    )
    body = yaml.safe_load((REPO_ROOT / "examples" / "finetunejob-lora.yaml").read_text())
    body["metadata"]["namespace"] = namespace
    created = CustomObjectsApi(admin).create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", body)
    # What an operator leaves behind when killed right after creating the Job: the children, no status, no Event.
    job = FineTuneJob.model_validate(created)
    settings = OperatorSettings(
        runtime_image="registry.test/peft-runtime:test",
        progress_url=process.progress_url,
        progress_key=process.progress_key.encode(),
    )
    for child in (render_progress_secret(job, settings), render_plan_configmap(job, settings)):
        kube.ensure_namespaced(admin, child)
    kube.ensure_namespaced(admin, render_training_job(job, settings))
    process.start()
    try:
        events = wait_for(
            "the JobCreated Event",
            lambda: [
                e
                for e in CoreV1Api(admin).list_namespaced_event(namespace).items
                if e.reason == "JobCreated" and e.involved_object.name == "smollm2-lora"
            ],
        )
        assert events[0].message == "Created Job smollm2-lora-train"
        wait_for(
            "the status to name the Job",
            lambda: (
                CustomObjectsApi(admin)
                .get_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", "smollm2-lora")
                .get("status")
                or {}
            ).get("jobName"),
        )
        assert [j.metadata.name for j in BatchV1Api(admin).list_namespaced_job(namespace).items] == [
            "smollm2-lora-train"
        ]
        assert "Traceback" not in process.log_text()
    finally:
        process.stop()
