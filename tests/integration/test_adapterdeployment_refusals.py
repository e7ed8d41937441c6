"""Integration: nothing accepted silently. What the apiserver takes but the operator cannot serve ends in a
status condition and a Warning Event that say why, never in a retry loop of tracebacks in the operator log:
a child object the apiserver refuses, `file://` outside local mode (base model or adapter). And the longest
name the schema allows really gets its Deployment, Service and labels."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient, AppsV1Api, BatchV1Api, CoreV1Api, CustomObjectsApi

from tests.support.controlplane import REPO_ROOT
from tests.support.kubelet import wait_for
from tests.support.operator_process import OperatorProcess

pytestmark = pytest.mark.integration
GROUP, VERSION = "peft.dev", "v1alpha1"
BASE = "hf://HuggingFaceTB/SmolLM2-135M-Instruct"
SHA = "b" * 64


def _adapterdeployment(admin: ApiClient, namespace: str, name: str, **spec: Any) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AdapterDeployment",
        "metadata": {"name": name},
        "spec": {"baseModel": {"uri": BASE}, "runtime": {"resources": {"gpus": 0}}, **spec},
    }
    CustomObjectsApi(admin).create_namespaced_custom_object(GROUP, VERSION, namespace, "adapterdeployments", body)


def _status(admin: ApiClient, namespace: str, name: str, plural: str = "adapterdeployments") -> dict[str, Any]:
    obj = CustomObjectsApi(admin).get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
    return obj.get("status") or {}  # type: ignore[no-any-return]


def _condition(admin: ApiClient, namespace: str, name: str, type_: str, plural: str = "adapterdeployments") -> Any:
    conditions = _status(admin, namespace, name, plural).get("conditions", [])
    return next((c for c in conditions if c["type"] == type_), None)


def _warnings(admin: ApiClient, namespace: str, name: str) -> dict[str, str]:
    events = CoreV1Api(admin).list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
    return {e.reason: e.message for e in events if e.type == "Warning"}


def _deployments(admin: ApiClient, namespace: str) -> set[str]:
    return {d.metadata.name for d in AppsV1Api(admin).list_namespaced_deployment(namespace).items}


def test_the_longest_name_gets_its_deployment_service_and_labels(
    operator: OperatorProcess, admin: ApiClient, namespace: str
) -> None:
    name = "a" + "-b" * 31  # 63 characters: the most a label value and a Service name hold
    _adapterdeployment(admin, namespace, name)
    wait_for("the engine Deployment", lambda: name in _deployments(admin, namespace))
    service = CoreV1Api(admin).read_namespaced_service(name, namespace)
    assert service.spec.selector["peft.dev/adapterdeployment"] == name
    wait_for("a status", lambda: _condition(admin, namespace, name, "Ready"))


def test_a_child_the_apiserver_refuses_is_a_condition_and_a_warning_not_a_traceback(
    operator: OperatorProcess, admin: ApiClient, namespace: str
) -> None:
    # Valid for the CRD schema (any string key), refused by the apiserver's Deployment validation.
    _adapterdeployment(
        admin, namespace, "bad-selector", runtime={"resources": {"gpus": 0, "nodeSelector": {"gpu type!": "a100"}}}
    )
    ready = wait_for(
        "Ready=False CreateRejected",
        lambda: (c := _condition(admin, namespace, "bad-selector", "Ready")) and c["reason"] == "CreateRejected" and c,
    )
    assert ready["status"] == "False" and "nodeSelector" in ready["message"], ready
    warning = wait_for("a Warning Event", lambda: _warnings(admin, namespace, "bad-selector").get("CreateRejected"))
    assert "nodeSelector" in warning
    assert "bad-selector" not in _deployments(admin, namespace)
    assert "Traceback" not in operator.log_text()


def test_a_finetunejob_whose_job_is_refused_stays_pending_with_the_reason(
    operator: OperatorProcess, admin: ApiClient, namespace: str
) -> None:
    body = yaml.safe_load((REPO_ROOT / "examples" / "finetunejob-lora.yaml").read_text())
    body["metadata"].update(name="bad-selector-v1", namespace=namespace)
    body["spec"]["resources"]["nodeSelector"] = {"gpu type!": "a100"}
    CustomObjectsApi(admin).create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", body)
    running = wait_for(
        "Running=False CreateRejected",
        lambda: (
            (c := _condition(admin, namespace, "bad-selector-v1", "Running", "finetunejobs"))
            and c["reason"] == "CreateRejected"
            and c
        ),
    )
    assert "nodeSelector" in running["message"]
    assert _status(admin, namespace, "bad-selector-v1", "finetunejobs")["phase"] == "Pending"
    assert "CreateRejected" in wait_for("a Warning Event", lambda: _warnings(admin, namespace, "bad-selector-v1"))
    assert BatchV1Api(admin).list_namespaced_job(namespace).items == []
    assert "Traceback" not in operator.log_text()


def test_a_file_base_model_is_refused_and_no_engine_runs(
    operator: OperatorProcess, admin: ApiClient, namespace: str
) -> None:
    _adapterdeployment(admin, namespace, "local-base", baseModel={"uri": "file:///etc"})
    ready = wait_for(
        "Ready=False InvalidSpec",
        lambda: (c := _condition(admin, namespace, "local-base", "Ready")) and c["reason"] == "InvalidSpec" and c,
    )
    assert "spec.baseModel.uri: file:// works only in local mode" in ready["message"]
    assert "InvalidSpec" in wait_for("a Warning Event", lambda: _warnings(admin, namespace, "local-base"))
    assert "local-base" not in _deployments(admin, namespace)


def test_a_file_adapter_fails_alone_and_is_never_sent_to_the_agents(
    operator: OperatorProcess, admin: ApiClient, namespace: str
) -> None:
    stolen = {"name": "stolen", "source": {"uri": "file:///etc/shadow", "sha256": SHA}}
    _adapterdeployment(admin, namespace, "tenants", adapters=[stolen])
    adapter = wait_for(
        "the adapter to fail",
        lambda: next(
            (a for a in _status(admin, namespace, "tenants").get("adapters", []) if a["state"] == "Failed"), None
        ),
    )
    assert adapter["name"] == "stolen" and "file:// works only in local mode" in adapter["message"]
    assert "uri" not in adapter, "a refused source is not recorded as served"
    assert "AdapterFailed" in wait_for("a Warning Event", lambda: _warnings(admin, namespace, "tenants"))
    assert "tenants" in _deployments(admin, namespace), "the other adapters' engine still runs"


def test_a_token_secret_without_its_key_is_a_condition_with_the_fix_and_clears_once_the_key_is_there(
    operator: OperatorProcess, admin: ApiClient, namespace: str
) -> None:
    CoreV1Api(admin).create_namespaced_secret(
        namespace, {"metadata": {"name": "engine-admin"}, "stringData": {"other": "x"}}
    )
    _adapterdeployment(admin, namespace, "no-token-key", tokenSecretRef={"name": "engine-admin", "key": "token"})
    ready = wait_for(
        "Ready=False SecretKeyNotFound",
        lambda: (
            (c := _condition(admin, namespace, "no-token-key", "Ready")) and c["reason"] == "SecretKeyNotFound" and c
        ),
    )
    assert ready["message"] == (
        "spec.tokenSecretRef: Secret engine-admin has no key token (it has: other); add the key and the adapters load."
    )
    assert _condition(admin, namespace, "no-token-key", "Degraded")["reason"] == "SecretKeyNotFound"
    assert "SecretKeyNotFound" in wait_for("a Warning Event", lambda: _warnings(admin, namespace, "no-token-key"))
    assert "no-token-key" not in _deployments(admin, namespace)
    CoreV1Api(admin).patch_namespaced_secret("engine-admin", namespace, {"stringData": {"token": "s3cret"}})
    wait_for("the engine Deployment after the fix", lambda: "no-token-key" in _deployments(admin, namespace), 60)
    assert "Traceback" not in operator.log_text()


def test_a_target_deployment_without_the_named_container_is_a_condition_with_the_fix(
    operator: OperatorProcess, admin: ApiClient, namespace: str
) -> None:
    labels = {"app": "vllm"}
    AppsV1Api(admin).create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "vllm"},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "server", "image": "vllm/vllm-openai:v0.11.0"}]},
                },
            },
        },
    )
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AdapterDeployment",
        "metadata": {"name": "wrong-container"},
        "spec": {"baseModel": {"uri": BASE}, "targetRef": {"name": "vllm", "container": "engine"}},
    }
    CustomObjectsApi(admin).create_namespaced_custom_object(GROUP, VERSION, namespace, "adapterdeployments", body)
    ready = wait_for(
        "Ready=False TargetContainerNotFound",
        lambda: (
            (c := _condition(admin, namespace, "wrong-container", "Ready"))
            and c["reason"] == "TargetContainerNotFound"
            and c
        ),
    )
    assert ready["message"] == (
        "Deployment vllm has no container named engine (it has: server); fix targetRef.container."
    )
    assert "TargetContainerNotFound" in wait_for("a Warning", lambda: _warnings(admin, namespace, "wrong-container"))
    assert "Traceback" not in operator.log_text()
