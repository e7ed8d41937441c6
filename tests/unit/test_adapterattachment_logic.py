"""Unit (pure logic): which attachments a shared AdapterDeployment accepts, how their sources resolve in the
tenant's namespace, and the status and Events the tenant sees."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_schema_validator import OAS30Validator
from pydantic import ValidationError

from peft_operator.adapterattachment.admission import Verdict, admit
from peft_operator.adapterattachment.sources import credentials_from, resolve_source
from peft_operator.adapterattachment.status import Serving, attachment_events, attachment_status
from peft_operator.api import AdapterAttachment, AdapterAttachmentStatus, AdapterDeployment
from peft_operator.api.adapterattachment import is_served_name
from peft_operator.api.adapterdeployment import AdapterState, AdapterStatus
from peft_operator.api.agent import SourceCredentials
from peft_operator.api.selectors import LabelSelector
from peft_operator.api.validation import parse_object
from peft_operator.crdgen import adapterattachment_crd, adapterdeployment_crd

SHA = "d" * 64
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def _deployment(attachments: dict[str, Any] | None = None, max_adapters: int = 32, own: int = 0) -> AdapterDeployment:
    spec: dict[str, Any] = {
        "baseModel": {"uri": "pvc://models/base"},
        "runtime": {"engine": "builtin"},
        "limits": {"maxAdapters": max_adapters},
        "adapters": [{"name": f"own-{i}", "source": {"uri": "s3://platform/a", "sha256": SHA}} for i in range(own)],
    }
    if attachments is not None:
        spec["attachments"] = attachments
    return AdapterDeployment.model_validate({"metadata": {"name": "shared", "namespace": "llm-platform"}, "spec": spec})


def _attachment(
    namespace: str, name: str, adapter: str | None = None, created: str = "2026-11-29T10:00:00Z"
) -> AdapterAttachment:
    return AdapterAttachment.model_validate(
        {
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": created},
            "spec": {
                "adapterDeploymentRef": {"namespace": "llm-platform", "name": "shared"},
                "name": adapter or name,
                "source": {"uri": f"s3://{namespace}-bucket/{name}", "sha256": SHA},
            },
        }
    )


def _reasons(verdicts: dict[tuple[str, str], Any]) -> dict[tuple[str, str], str]:
    return {key: verdict.reason for key, verdict in verdicts.items()}


def test_by_default_only_the_deployments_own_namespace_may_attach() -> None:
    verdicts = admit(_deployment(), [_attachment("llm-platform", "x"), _attachment("tenant-a", "pirate")], {})
    assert _reasons(verdicts) == {("llm-platform", "x"): "Accepted", ("tenant-a", "pirate"): "NotAllowedByDeployment"}
    message = verdicts[("tenant-a", "pirate")].message
    assert "from: Same" in message and "namespace tenant-a is not allowed" in message


def test_a_selector_admits_the_namespaces_whose_labels_match() -> None:
    policy = {"from": "Selector", "selector": {"matchLabels": {"peft.dev/tenant": "true"}}}
    labels = {"tenant-a": {"peft.dev/tenant": "true"}, "tenant-b": {"team": "b"}}
    verdicts = admit(_deployment(policy), [_attachment("tenant-a", "p"), _attachment("tenant-b", "q")], labels)
    assert _reasons(verdicts) == {("tenant-a", "p"): "Accepted", ("tenant-b", "q"): "NotAllowedByDeployment"}
    assert "spec.attachments.selector" in verdicts[("tenant-b", "q")].message


def test_quota_per_namespace_keeps_the_oldest_and_refuses_the_newcomer() -> None:
    older = _attachment("tenant-a", "one", created="2026-11-29T10:00:00Z")
    newer = _attachment("tenant-a", "two", created="2026-11-29T11:00:00Z")
    other = _attachment("tenant-b", "three", created="2026-11-29T12:00:00Z")
    verdicts = admit(_deployment({"from": "All", "maxPerNamespace": 1}), [newer, other, older], {})
    assert _reasons(verdicts) == {
        ("tenant-a", "one"): "Accepted",
        ("tenant-a", "two"): "QuotaExceeded",
        ("tenant-b", "three"): "Accepted",
    }
    assert "maxPerNamespace: 1" in verdicts[("tenant-a", "two")].message


def test_the_deployments_own_adapters_count_against_max_adapters_first() -> None:
    verdicts = admit(
        _deployment({"from": "All"}, max_adapters=3, own=2),
        [
            _attachment("tenant-a", "p", created="2026-11-29T10:00:00Z"),
            _attachment("tenant-b", "q", created="2026-11-29T11:00:00Z"),
        ],
        {},
    )
    assert _reasons(verdicts) == {("tenant-a", "p"): "Accepted", ("tenant-b", "q"): "QuotaExceeded"}
    assert "limits.maxAdapters: 3" in verdicts[("tenant-b", "q")].message


def test_two_attachments_of_one_namespace_cannot_serve_the_same_name() -> None:
    first = _attachment("tenant-a", "pirate-v1", adapter="pirate", created="2026-11-29T10:00:00Z")
    second = _attachment("tenant-a", "pirate-v2", adapter="pirate", created="2026-11-29T11:00:00Z")
    same_name_elsewhere = _attachment("tenant-b", "pirate", created="2026-11-29T12:00:00Z")
    verdicts = admit(_deployment({"from": "All"}), [second, first, same_name_elsewhere], {})
    assert _reasons(verdicts) == {
        ("tenant-a", "pirate-v1"): "Accepted",
        ("tenant-a", "pirate-v2"): "NameConflict",
        ("tenant-b", "pirate"): "Accepted",  # served as tenant-b/pirate: no clash with tenant-a/pirate
    }


def test_an_attachment_cannot_take_the_base_models_served_name() -> None:
    """hf://bigscience/bloom-560m is served as bigscience/bloom-560m: namespace bigscience must not shadow it."""
    posing = _attachment("bigscience", "bloom", adapter="bloom-560m")
    verdicts = admit(_deployment({"from": "All"}), [posing], {}, reserved=frozenset({"bigscience/bloom-560m"}))
    assert verdicts[("bigscience", "bloom")].reason == "NameConflict"
    assert "served name of llm-platform/shared's base model" in verdicts[("bigscience", "bloom")].message


def test_served_names_are_labels_or_namespace_slash_label() -> None:
    assert is_served_name("pirate") and is_served_name("tenant-a/pirate")
    assert not any(map(is_served_name, ["a/b/c", "/pirate", "tenant-a/", "Tenant/x", "a_b", "x" * 64]))


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"from": "Selector"}, "needs attachments.selector"),
        ({"from": "All", "selector": {}}, "only with attachments.from: Selector"),
    ],
)
def test_an_inconsistent_policy_is_refused(policy: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _deployment(policy)


def test_label_selector_expressions_follow_kubernetes() -> None:
    selector = LabelSelector.model_validate(
        {
            "matchLabels": {"tier": "tenant"},
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["prod", "staging"]},
                {"key": "blocked", "operator": "DoesNotExist"},
                {"key": "team", "operator": "NotIn", "values": ["red"]},
            ],
        }
    )
    assert selector.matches({"tier": "tenant", "env": "prod"})  # NotIn holds when the key is absent
    assert not selector.matches({"tier": "tenant", "env": "dev"})
    assert not selector.matches({"tier": "tenant", "env": "prod", "blocked": "yes"})
    assert not selector.matches({"tier": "tenant", "env": "prod", "team": "red"})
    assert LabelSelector().matches({})


def _spec(source: dict[str, Any]) -> Any:
    return AdapterAttachment.model_validate(
        {"spec": {"adapterDeploymentRef": {"namespace": "p", "name": "d"}, "name": "x", "source": source}}
    ).spec


def test_a_pvc_source_is_not_permitted_across_namespaces() -> None:
    resolved = resolve_source(
        _spec({"uri": "pvc://platform-adapters/x", "sha256": SHA}), lambda _: None, lambda _: None
    )
    assert resolved.reason == "RefNotPermitted" and "s3:// or hf://" in resolved.message


def test_a_uri_source_needs_its_secret_with_credential_keys() -> None:
    spec = _spec({"uri": "s3://tenant-a-bucket/x", "sha256": SHA, "credentialsSecretRef": {"name": "s3"}})
    assert resolve_source(spec, lambda _: None, lambda _: None).reason == "RefNotFound"
    assert resolve_source(spec, lambda _: None, lambda _: frozenset({"password"})).reason == "RefNotFound"
    ok = resolve_source(spec, lambda _: None, lambda _: frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}))
    assert ok.resolved and ok.uri == "s3://tenant-a-bucket/x" and ok.credentials_secret == "s3"


def _job(phase: str, adapter: bool = True) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if adapter:
        status["adapter"] = {
            "uri": "s3://tenant-a-bucket/out",
            "sha256": SHA,
            "sizeBytes": 1,
            "baseModel": "b",
            "method": "lora",
        }
    return {
        "spec": {"output": {"uri": "s3://tenant-a-bucket/out", "credentialsSecretRef": {"name": "out-keys"}}},
        "status": status,
    }


def test_a_tenants_unusable_secret_refuses_its_own_attachment_without_showing_a_value() -> None:
    data = {"AWS_ACCESS_KEY_ID": "AKIATENANT", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value", "AWS_ENDPOINT_URL": "h" * 3000}
    refused = credentials_from("s3-keys", data)
    assert not isinstance(refused, SourceCredentials) and refused.reason == "RefNotValid"
    assert "Secret s3-keys: AWS_ENDPOINT_URL" in refused.message and "s3cr3t-value" not in refused.message
    assert "hhhh" not in refused.message
    usable = credentials_from("s3-keys", {**data, "AWS_ENDPOINT_URL": "http://s3.example", "unrelated": "x"})
    assert isinstance(usable, SourceCredentials) and usable.aws_endpoint_url == "http://s3.example"
    assert (
        usable.aws_secret_access_key is not None and usable.aws_secret_access_key.get_secret_value() == "s3cr3t-value"
    )


def test_a_finetunejob_source_waits_for_success_and_uses_the_jobs_output_secret() -> None:
    spec = _spec({"fineTuneJobRef": {"name": "pirate-v1"}})
    keys = lambda _: frozenset({"AWS_ACCESS_KEY_ID"})  # noqa: E731
    assert resolve_source(spec, lambda _: None, keys).reason == "RefNotFound"
    running = resolve_source(spec, lambda _: _job("Running", adapter=False), keys)
    assert running.reason == "RefNotReady" and "Running" in running.message
    assert "train again" in resolve_source(spec, lambda _: _job("Failed", adapter=False), keys).message
    done = resolve_source(spec, lambda _: _job("Succeeded"), keys)
    assert done.resolved and done.sha256 == SHA and done.credentials_secret == "out-keys"


def test_status_shows_served_name_endpoint_and_replicas_and_events_follow_changes() -> None:
    spec = _spec({"uri": "s3://tenant-a-bucket/x", "sha256": SHA})
    accepted = Verdict(True, "Accepted", "Attached to AdapterDeployment llm-platform/shared as tenant-a/x.")
    source = resolve_source(spec, lambda _: None, lambda _: None)
    loading = AdapterStatus(
        name="tenant-a/x", state=AdapterState.LOADING, loaded_replicas=1, message="Loaded on 1 of 2 replicas."
    )
    endpoint = "http://shared.llm-platform.svc:8000/v1"
    first = attachment_status(
        AdapterAttachmentStatus(), 1, "tenant-a/x", accepted, source, Serving(endpoint, 2, loading), NOW
    )
    assert first.served_name == "tenant-a/x" and first.endpoint == endpoint and first.replicas == 2
    assert {c.type: (c.status.value, c.reason) for c in first.conditions} == {
        "Accepted": ("True", "Accepted"),
        "ResolvedRefs": ("True", "ResolvedRefs"),
        "Ready": ("False", "Loading"),
    }
    assert [e.reason for e in attachment_events(AdapterAttachmentStatus(), first)] == ["Accepted"]

    loaded = loading.model_copy(update={"state": AdapterState.LOADED, "loaded_replicas": 2, "digest": SHA})
    second = attachment_status(first, 1, "tenant-a/x", accepted, source, Serving(endpoint, 2, loaded), NOW)
    assert second.state is AdapterState.LOADED and second.loaded_replicas == 2 and second.message is None
    assert [(e.type, e.reason) for e in attachment_events(first, second)] == [("Normal", "AdapterLoaded")]
    assert attachment_events(second, second) == []


def test_a_refused_attachment_is_pending_with_the_reason_and_a_warning() -> None:
    refused = Verdict(False, "NotAllowedByDeployment", "namespace tenant-z is not allowed.")
    status = attachment_status(AdapterAttachmentStatus(), 1, "tenant-z/x", refused, None, None, NOW)
    ready = next(c for c in status.conditions if c.type == "Ready")
    assert status.state is AdapterState.PENDING and ready.reason == "NotAccepted"
    assert status.message == "namespace tenant-z is not allowed."
    assert not any(c.type == "ResolvedRefs" for c in status.conditions)
    events = attachment_events(AdapterAttachmentStatus(), status)
    assert [(e.type, e.reason) for e in events] == [("Warning", "NotAllowedByDeployment")]


TENANCY = Path(__file__).resolve().parents[2] / "examples" / "tenancy"
KINDS = {"AdapterDeployment": AdapterDeployment, "AdapterAttachment": AdapterAttachment}
SCHEMAS = {
    crd["spec"]["names"]["kind"]: crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for crd in (adapterdeployment_crd(), adapterattachment_crd())
}


@pytest.mark.parametrize("path", sorted(TENANCY.glob("*.yaml")), ids=lambda p: p.stem)
def test_the_tenancy_examples_are_valid_for_the_crd_schema_and_the_models(path: Path) -> None:
    objects = [o for o in yaml.safe_load_all(path.read_text()) if o["apiVersion"].startswith("peft.dev/")]
    for obj in objects:
        errors = [e.message for e in OAS30Validator(SCHEMAS[obj["kind"]]).iter_errors(obj)]
        assert errors == []
        parse_object(KINDS[obj["kind"]], obj)
