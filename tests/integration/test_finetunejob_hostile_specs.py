"""Integration: 30+ malformed or hostile FineTuneJobs. The API server refuses what the CRD schema and
CEL rules can judge; the operator refuses the rest in status and Events, and keeps working."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient, ApiException, BatchV1Api, CoreV1Api, CustomObjectsApi

from tests.support.controlplane import REPO_ROOT
from tests.support.kubelet import wait_for
from tests.support.operator_process import OperatorProcess

pytestmark = pytest.mark.integration
EXAMPLES = REPO_ROOT / "examples"
GROUP, VERSION = "peft.dev", "v1alpha1"
Mutation = Callable[[dict[str, Any]], None]


def _base() -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / "finetunejob-lora.yaml").read_text())  # type: ignore[no-any-return]


def _set(path: str, value: Any) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = body
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value

    return mutate


def _drop(path: str) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = body
        for part in parents:
            node = node[part]
        del node[leaf]

    return mutate


# (case, mutation, a field path the API server's message must name)
REFUSED_BY_API_SERVER: list[tuple[str, Mutation, str]] = [
    ("uri-too-long", _set("spec.baseModel.uri", "hf://org/" + "m" * 2000), "spec.baseModel.uri"),
    ("method-type-not-a-string", _set("spec.method.type", 123), "spec.method.type"),
    ("training-not-an-object", _set("spec.training", "fast"), "spec.training"),
    (
        "node-selector-flood",
        _set("spec.resources.nodeSelector", {f"k{i}": "v" for i in range(100)}),
        "spec.resources.nodeSelector",
    ),
    (
        "target-module-flood",
        _set("spec.method.lora.targetModules", [f"m{i}" for i in range(100)]),
        "spec.method.lora.targetModules",
    ),
    ("learning-rate-not-a-number", _set("spec.training.learningRate", "fast"), "spec.training.learningRate"),
    ("missing-output", _drop("spec.output"), "spec.output"),
    (
        "toleration-operator-unknown",
        _set("spec.resources.tolerations", [{"key": "gpu", "operator": "Maybe"}]),
        "spec.resources.tolerations[0].operator",
    ),
    ("queue-name-not-dns", _set("spec.queue", {"name": "Bad_Queue"}), "spec.queue.name"),
    (
        "module-name-injection",
        _set("spec.method.lora.targetModules", ["q_proj; rm -rf /"]),
        "spec.method.lora.targetModules[0]",
    ),
    (
        "secret-name-traversal",
        _set("spec.output.credentialsSecretRef", {"name": "../kube-system/admin"}),
        "spec.output.credentialsSecretRef.name",
    ),
    ("huge-batch", _set("spec.training.batchSize", 10**9), "spec.training.batchSize"),
    ("zero-max-steps", _set("spec.training.maxSteps", 0), "spec.training.maxSteps"),
    ("prefix-params-on-lora", _set("spec.method.prefix", {"numVirtualTokens": 4}), "spec.method"),
]
BROKEN_SCHEMA_EXAMPLES = [
    p
    for p in sorted((EXAMPLES / "broken").glob("*.yaml"))
    if "# layer: schema" in p.read_text() and "kind: FineTuneJob" in p.read_text()
]

# (case, mutation, what the status message must say) — valid for the schema, refused by the operator.
REFUSED_BY_OPERATOR: list[tuple[str, Mutation, str]] = [
    (
        "file-base-model",
        _set("spec.baseModel.uri", "file:///models/smollm2"),
        "spec.baseModel.uri: file:// works only in local mode",
    ),
    (
        "file-dataset",
        _set("spec.dataset.uri", "file:///data/train.jsonl"),
        "spec.dataset.uri: file:// works only in local mode",
    ),
    ("file-output", _set("spec.output.uri", "file:///out"), "spec.output.uri: file:// works only in local mode"),
    (
        "qlora-on-cpu",
        lambda b: (
            b["spec"].update(method={"type": "qlora", "qlora": {"quantization": {"bits": 4}}}),
            b["spec"].update(resources={"gpus": 0}),
        ),
        "qlora needs a GPU",
    ),
    ("learning-rate-zero", _set("spec.training.learningRate", "0"), "spec.training.learningRate: 0 is outside (0, 1)"),
    ("learning-rate-above-one", _set("spec.training.learningRate", "1.5"), "outside (0, 1)"),
    ("output-escapes-volume", _set("spec.output.uri", "pvc://team-adapters/../../etc"), "contains '..'"),
    ("dataset-escapes-volume", _set("spec.dataset.uri", "pvc://team-data/a/../../../secrets"), "contains '..'"),
    ("hf-model-without-name", _set("spec.baseModel.uri", "hf://SmolLM2"), "is not a Hub repository"),
    ("configmap-without-key", _set("spec.dataset.uri", "configmap://notes"), "must name one key"),
    ("s3-bucket-invalid", _set("spec.output.uri", "s3://UPPER_bucket/x"), "is not a valid S3 bucket name"),
]
BROKEN_OPERATOR_EXAMPLES = [
    p for p in sorted((EXAMPLES / "broken").glob("*.yaml")) if "# layer: operator" in p.read_text()
]


def test_there_are_more_than_thirty_hostile_cases() -> None:
    total = (
        len(REFUSED_BY_API_SERVER)
        + len(BROKEN_SCHEMA_EXAMPLES)
        + len(REFUSED_BY_OPERATOR)
        + len(BROKEN_OPERATOR_EXAMPLES)
    )
    assert total >= 30, total


def _create(admin: ApiClient, namespace: str, body: dict[str, Any]) -> None:
    body["metadata"]["namespace"] = namespace
    CustomObjectsApi(admin).create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", body)


@pytest.mark.parametrize(("case", "mutate", "field"), REFUSED_BY_API_SERVER, ids=[c[0] for c in REFUSED_BY_API_SERVER])
def test_api_server_refuses_naming_the_field(
    crds_installed: list[str], admin: ApiClient, namespace: str, case: str, mutate: Mutation, field: str
) -> None:
    body = copy.deepcopy(_base())
    body["metadata"]["name"] = case
    mutate(body)
    with pytest.raises(ApiException) as refused:
        _create(admin, namespace, body)
    assert refused.value.status == 422, refused.value.body
    assert field in refused.value.body


@pytest.mark.parametrize("path", BROKEN_SCHEMA_EXAMPLES, ids=lambda p: p.stem)
def test_api_server_refuses_broken_example(
    crds_installed: list[str], admin: ApiClient, namespace: str, path: Path
) -> None:
    with pytest.raises(ApiException) as refused:
        _create(admin, namespace, yaml.safe_load(path.read_text()))
    assert refused.value.status == 422


def test_operator_refuses_the_rest_in_status_and_events_and_keeps_working(
    operator: OperatorProcess, admin: ApiClient, namespace: str
) -> None:
    expected: dict[str, str] = {}
    for case, mutate, message in REFUSED_BY_OPERATOR:
        body = copy.deepcopy(_base())
        body["metadata"]["name"] = case
        mutate(body)
        _create(admin, namespace, body)
        expected[case] = message
    for path in BROKEN_OPERATOR_EXAMPLES:
        body = yaml.safe_load(path.read_text())
        expected[body["metadata"]["name"]] = next(
            line.split(": ", 1)[1] for line in path.read_text().splitlines() if line.startswith("# expect: ")
        )
        _create(admin, namespace, body)
    valid = _base()
    valid["metadata"]["name"] = "still-served"
    _create(admin, namespace, valid)

    custom, core = CustomObjectsApi(admin), CoreV1Api(admin)

    def failed_conditions() -> dict[str, dict[str, Any]]:
        items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs")["items"]
        return {
            i["metadata"]["name"]: c
            for i in items
            for c in (i.get("status") or {}).get("conditions", [])
            if c["type"] == "Failed" and c["status"] == "True"
        }

    conditions = wait_for(
        "every hostile job to fail",
        lambda: all_failed if set(expected) <= set(all_failed := failed_conditions()) else None,
        timeout=120,
    )
    for name, message in expected.items():
        assert conditions[name]["reason"] == "InvalidSpec", name
        assert message in conditions[name]["message"], (name, conditions[name]["message"])
    events = core.list_namespaced_event(namespace).items
    warned = {e.involved_object.name for e in events if e.type == "Warning" and e.reason == "InvalidSpec"}
    assert set(expected) <= warned
    assert core.list_namespaced_config_map(namespace, label_selector="peft.dev/finetunejob").items != []
    jobs = {j.metadata.name for j in BatchV1Api(admin).list_namespaced_job(namespace).items}
    assert jobs == {"still-served-train"}, "refused specs must not get a Job"
    assert operator.alive()
