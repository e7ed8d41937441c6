"""Unit: API keys (access.apiKeys: Required): the spec's rule, the engine pod it renders, the attachment's
status, the Secret names, and the engine gate's grant logic and keyring file (pure functions and a temp dir)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from peft_operator.adapterattachment.admission import Verdict
from peft_operator.adapterattachment.status import attachment_status
from peft_operator.adapterdeployment.access import API_KEY, key_secret
from peft_operator.adapterdeployment.agent_client import AgentRefusal
from peft_operator.adapterdeployment.engine import KEYRING_FILE, render_engine_deployment
from peft_operator.adapterdeployment.reconcile import sync_pod
from peft_operator.adapterdeployment.sources import DesiredAdapter
from peft_operator.adapterdeployment.status import pod_is_complete
from peft_operator.api import AdapterAttachmentStatus, AdapterDeployment
from peft_operator.api.agent import KeyGrant, Keyring, key_digest
from peft_operator.api.base import ObjectMeta
from peft_operator.naming import attachment_key_secret_name
from peft_operator.settings import OperatorSettings
from peft_runtime.agent.keyring import write_keyring
from peft_runtime.gate.access import MISSING_KEY, UNKNOWN_KEY, Grants, KeyringFile, bearer_key, not_granted
from peft_runtime.gate.proxy import _end_to_end
from tests.unit.test_sync_pod import FakeAgent

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SETTINGS = OperatorSettings(runtime_image="registry.example/peft-runtime:1.2.3")


def _adep(access: dict[str, Any] | None = None, target: bool = False) -> AdapterDeployment:
    body = yaml.safe_load((EXAMPLES / "adapterdeployment-quickstart.yaml").read_text())
    body["metadata"].update({"namespace": "llm-platform", "uid": "uid-1"})
    if access is not None:
        body["spec"]["access"] = access
    if target:
        body["spec"].pop("runtime")
        body["spec"]["targetRef"] = {"name": "my-vllm"}
    return AdapterDeployment.model_validate(body)


def _containers(adep: AdapterDeployment) -> dict[str, dict[str, Any]]:
    spec = render_engine_deployment(adep, SETTINGS)["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec["containers"]} | {"volumes": {v["name"]: v for v in spec["volumes"]}}


def test_keys_are_off_by_default_and_the_pod_has_no_keyring() -> None:
    containers = _containers(_adep())
    assert _adep().spec.access.api_keys.value == "Disabled"
    assert not any(
        "--keyring-file" in arg for c in ("engine-gate", "adapter-agent") for arg in containers[c]["command"]
    )
    assert "access" not in containers["volumes"]


def test_required_keys_share_a_keyring_volume_written_by_the_agent_read_only_for_the_gate() -> None:
    containers = _containers(_adep({"apiKeys": "Required"}))
    gate, agent = containers["engine-gate"], containers["adapter-agent"]
    assert f"--keyring-file={KEYRING_FILE}" in gate["command"] and f"--keyring-file={KEYRING_FILE}" in agent["command"]
    gate_mount = next(m for m in gate["volumeMounts"] if m["name"] == "access")
    agent_mount = next(m for m in agent["volumeMounts"] if m["name"] == "access")
    assert gate_mount["readOnly"] is True and "readOnly" not in agent_mount
    assert containers["volumes"]["access"]["emptyDir"]["medium"] == "Memory"
    assert not any("access" in str(m) for m in containers["engine"]["volumeMounts"])


def test_required_keys_need_runtime_since_a_target_ref_has_no_gate() -> None:
    with pytest.raises(ValidationError, match=r"access\.apiKeys: Required needs runtime"):
        _adep({"apiKeys": "Required"}, target=True)
    assert _adep({"apiKeys": "Disabled"}, target=True).spec.target_ref is not None
    with pytest.raises(ValidationError):
        _adep({"apiKeys": "Sometimes"})


def test_a_key_secret_is_owned_by_its_owner_in_its_namespace_and_holds_only_the_key() -> None:
    owner = ObjectMeta(name="pirate", namespace="tenant-a", uid="att-uid")
    secret = key_secret("AdapterAttachment", owner, "pirate-api-key", "s3cret")
    assert secret["metadata"]["namespace"] == "tenant-a" and secret["stringData"] == {API_KEY: "s3cret"}
    owner_ref = secret["metadata"]["ownerReferences"][0]
    assert (owner_ref["kind"], owner_ref["uid"], owner_ref["controller"]) == ("AdapterAttachment", "att-uid", True)
    # No finalizers right on AdapterAttachments needed (OwnerReferencesPermissionEnforcement).
    assert owner_ref["blockOwnerDeletion"] is False
    # FIPS 180-2's test vector for "abc": a plain sha256 of the key's text, as the docs tell clients.
    assert key_digest("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_attachment_key_secret_names_fit_a_secret_name() -> None:
    assert attachment_key_secret_name("pirate") == "pirate-api-key"
    long_a, long_b = "a" * 250, "a" * 249 + "b"
    assert len(attachment_key_secret_name(long_a)) <= 253
    assert attachment_key_secret_name(long_a) != attachment_key_secret_name(long_b)


def test_an_accepted_attachment_names_its_key_secret_and_a_refused_one_none() -> None:
    now = datetime(2026, 11, 29, tzinfo=UTC)
    accepted = Verdict(True, "Accepted", "ok")
    status = attachment_status(AdapterAttachmentStatus(), 1, "tenant-a/pirate", accepted, None, None, now, "p-api-key")
    assert status.api_key_secret_ref is not None and status.api_key_secret_ref.name == "p-api-key"
    refused = Verdict(False, "QuotaExceeded", "full")
    again = attachment_status(status, 2, "tenant-a/pirate", refused, None, None, now)
    assert again.api_key_secret_ref is None
    assert "apiKeySecretRef" in status.to_wire() and "apiKeySecretRef" not in again.to_wire()


def _keyring(*grants: tuple[str, list[str]]) -> Keyring:
    return Keyring(keys=[KeyGrant(sha256=key_digest(k), models=m) for k, m in grants])


def test_a_key_grants_exactly_its_models_and_the_gate_knows_only_digests() -> None:
    grants = Grants.of(_keyring(("key-a", ["tenant-a/pirate"]), ("key-p", ["base", "own"]), ("key-a", ["tenant-a/x"])))
    assert grants.models("key-a") == {"tenant-a/pirate", "tenant-a/x"}  # one key, two entries: both granted
    assert grants.models("key-p") == {"base", "own"}
    assert grants.models(None) is MISSING_KEY and grants.models("") is MISSING_KEY
    assert grants.models("key-b") is UNKNOWN_KEY and grants.models("key-a ") is UNKNOWN_KEY
    assert "key-a" not in repr(grants) and key_digest("key-a") in grants.by_digest


def test_the_denials_name_what_is_wrong() -> None:
    denial = not_granted("tenant-b/formal", frozenset({"tenant-a/pirate"}))
    assert (denial.status, denial.type, denial.reason) == (403, "PermissionDeniedError", "ModelNotGranted")
    assert "'tenant-b/formal'" in denial.message and "tenant-a/pirate" in denial.message
    assert (MISSING_KEY.status, UNKNOWN_KEY.status) == (401, 401)
    assert MISSING_KEY.reason != UNKNOWN_KEY.reason


@pytest.mark.parametrize(
    ("header", "key"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("  Bearer   abc  ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("abc", None),
        (None, None),
    ],
)
def test_the_key_comes_from_a_bearer_authorization_header(header: str | None, key: str | None) -> None:
    assert bearer_key(header) == key


def test_the_keyring_file_is_reread_when_the_agent_replaces_it_and_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    keyring = KeyringFile(path)
    assert keyring.grants() is None  # nothing delivered yet: no key is valid

    assert write_keyring(path, _keyring(("key-a", ["a"]), ("key-b", ["b"]))).changed
    first = keyring.grants()
    assert first is not None and first.models("key-a") == {"a"}
    assert keyring.grants() is first  # unchanged file: not reparsed

    report = write_keyring(path, _keyring(("key-a", ["a"]), ("key-b", ["b"])))
    assert (report.changed, report.keys) == (False, 2)
    write_keyring(path, _keyring(("key-b", ["b"])))
    second = keyring.grants()
    assert second is not None and second.models("key-a") is UNKNOWN_KEY and second.models("key-b") == {"b"}

    path.write_text("{not json")
    assert keyring.grants() is None  # a broken keyring refuses everyone rather than guessing
    path.unlink()
    assert keyring.grants() is None


def test_the_clients_key_is_not_forwarded_to_the_engine_when_keys_are_checked() -> None:
    headers = {"Authorization": "Bearer key-a", "Content-Type": "application/json", "Connection": "close"}
    assert dict(_end_to_end(headers, frozenset({"authorization"}))) == {"Content-Type": "application/json"}
    assert "Authorization" in _end_to_end(headers)


class KeyedAgent(FakeAgent):
    """The fake agent of test_sync_pod, with the keyring route (refused like an agent without --keyring-file)."""

    def __init__(self, holds: dict[str, str], keyring_route: bool = True) -> None:
        super().__init__(holds)
        self.keyring_route = keyring_route
        self.keyrings: list[Keyring] = []

    def put_keyring(self, keyring: Keyring) -> None:
        self.calls.append(f"keyring {len(keyring.keys)}")
        if not self.keyring_route:
            raise AgentRefusal(404, "NotFound", "no route PUT /v1/keyring")
        self.keyrings.append(keyring)


def test_a_pods_gate_gets_the_keyring_before_any_adapter_changes() -> None:
    agent = KeyedAgent(holds={"revoked": "a" * 64})
    keyring = _keyring(("key-b", ["new"]))
    desired = [DesiredAdapter("new", uri="s3://adapters/new", sha256="b" * 64)]

    report = sync_pod(agent, "engine-0", desired, frozenset(), keyring)  # type: ignore[arg-type]

    assert agent.calls == ["keyring 1", "unload revoked", "load new b"]
    assert agent.keyrings == [keyring] and report.reachable


def test_a_pod_whose_gate_cannot_take_the_keyring_is_not_ready_and_nothing_loads() -> None:
    agent = KeyedAgent(holds={}, keyring_route=False)
    desired = [DesiredAdapter("new", uri="s3://adapters/new", sha256="b" * 64)]

    report = sync_pod(agent, "engine-0", desired, frozenset(), _keyring())  # type: ignore[arg-type]

    assert agent.calls == ["keyring 0"] and not report.reachable and "PUT /v1/keyring" in (report.error or "")
    assert not pod_is_complete(report, desired, frozenset())
