"""Integration: secrets stay secret. Planted values in the Secrets a FineTuneJob and an AdapterDeployment
reference must never show up in status, Events, ConfigMaps, Job specs or the operator's log; and the
progress endpoint refuses another job's token."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from kubernetes.client import ApiClient, BatchV1Api, CoreV1Api, CustomObjectsApi

from peft_operator.api.events import FailedEvent, FailureReason, ProgressEvent
from peft_operator.api.finetunejob import Progress
from tests.support import kubelet
from tests.support.controlplane import REPO_ROOT, ControlPlane
from tests.support.kubelet import wait_for
from tests.support.operator_process import OperatorProcess, operator_kubeconfig

pytestmark = pytest.mark.integration
GROUP, VERSION = "peft.dev", "v1alpha1"


def _secret(name: str, namespace: str, data: dict[str, str]) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": data,
    }


def _post(url: str, token: str, event: object) -> int:
    request = urllib.request.Request(
        url,
        data=event.model_dump_json(by_alias=True).encode(),
        headers={"Authorization": f"Bearer {token}"},  # type: ignore[attr-defined]
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_planted_secrets_never_leak_and_tokens_are_per_job(
    controller_manager: ControlPlane, crds_installed: list[str], admin: ApiClient, namespace: str, tmp_path: Path
) -> None:
    planted = {
        "s3-key": f"AKIA{uuid.uuid4().hex[:16].upper()}",
        "s3-secret": f"planted-s3-secret-{uuid.uuid4().hex}",
        "hub-token": f"hf_planted_{uuid.uuid4().hex}",
        "admin-token": f"planted-admin-token-{uuid.uuid4().hex}",
    }
    core, custom = CoreV1Api(admin), CustomObjectsApi(admin)
    core.create_namespaced_secret(
        namespace,
        _secret(
            "tenant-a-s3",  # the quickstart's credentialsSecretRef: the jobs wait until it exists
            namespace,
            {"AWS_ACCESS_KEY_ID": planted["s3-key"], "AWS_SECRET_ACCESS_KEY": planted["s3-secret"]},
        ),
    )
    core.create_namespaced_secret(namespace, _secret("hub", namespace, {"token": planted["hub-token"]}))
    core.create_namespaced_secret(namespace, _secret("engine-admin", namespace, {"token": planted["admin-token"]}))
    operator = OperatorProcess(
        operator_kubeconfig(controller_manager, role="peft-operator-security"), tmp_path / "op.log"
    ).start()
    try:
        jobs = []
        for name in ("leaky-a", "leaky-b"):
            body = yaml.safe_load((REPO_ROOT / "examples/finetunejob-quickstart.yaml").read_text())
            body["metadata"].update(name=name, namespace=namespace)
            body["spec"]["baseModel"]["tokenSecretRef"] = {"name": "hub", "key": "token"}
            body["spec"].pop("deploy")
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", body)
            jobs.append(name)
        adep = yaml.safe_load((REPO_ROOT / "examples/adapterdeployment-quickstart.yaml").read_text())
        adep["metadata"]["namespace"] = namespace
        adep["spec"]["tokenSecretRef"] = {"name": "engine-admin", "key": "token"}
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "adapterdeployments", adep)

        pod = wait_for("a trainer pod", lambda: kubelet.pods_of(admin, namespace, "peft.dev/finetunejob=leaky-a"))[0]
        kubelet.set_running(admin, pod)
        token_a = base64.b64decode(core.read_namespaced_secret("leaky-a-progress", namespace).data["token"]).decode()
        url_b = f"{operator.progress_url}/v1/progress/{namespace}/leaky-b"
        assert _post(url_b, token_a, ProgressEvent(progress=Progress(step=1))) == 401, "a job's token works only for it"
        failure = FailedEvent(
            reason=FailureReason.STORAGE_ERROR, message="cannot read s3://tenant-a-data/support/chat.jsonl"
        )
        kubelet.set_terminated(admin, pod, 3, "Error", failure.model_dump_json(by_alias=True))
        wait_for(
            "leaky-a to fail",
            lambda: (
                (
                    custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", "leaky-a").get(
                        "status"
                    )
                    or {}
                ).get("phase")
                == "Failed"
            ),
        )
        wait_for(
            "the engine Deployment",
            lambda: kubelet.pods_of(admin, namespace, "peft.dev/adapterdeployment=smollm2-shared"),
        )

        produced = {
            "finetunejobs": custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs"),
            "adapterdeployments": custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "adapterdeployments"),
            "events": [e.to_dict() for e in core.list_namespaced_event(namespace).items],
            "configmaps": [c.to_dict() for c in core.list_namespaced_config_map(namespace).items],
            "jobs": [j.to_dict() for j in BatchV1Api(admin).list_namespaced_job(namespace).items],
            "pods": [p.to_dict() for p in core.list_namespaced_pod(namespace).items],
            "operator log": operator.log_text(),
        }
        planted["progress-token"] = token_a
        for where, content in produced.items():
            text = content if isinstance(content, str) else json.dumps(content, default=str)
            for what, value in planted.items():
                assert value not in text, f"the {what} leaked into {where}"
        job = BatchV1Api(admin).read_namespaced_job("leaky-a-train", namespace)
        env = {e.name: e for e in job.spec.template.spec.containers[0].env}
        assert env["HF_TOKEN"].value is None and env["HF_TOKEN"].value_from.secret_key_ref.name == "hub"
    finally:
        operator.stop()
