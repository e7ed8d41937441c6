"""Integration: per-tenant API keys on a shared AdapterDeployment (`access.apiKeys: Required`) against the real
kube-apiserver and controller manager (garbage collection), the operator as a real process with the chart's
RBAC, a real S3 server holding each tenant's adapter behind the tenant's own keys, and the engine pod's real
engine, engine gate and agent processes (tests/support/node.py). Clients call through the engine Service with
the openai client, each with the key its namespace's Secret holds.

The tenants create their attachments with their own ServiceAccount tokens (examples/tenancy/02-tenant-role.yaml);
their clients read the key from the Secret (as a pod mounting it would). The steps share one deployment and
run in order. Namespaces are this module's own (keys-*), so the tenancy module's can be terminating meanwhile."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import openai
import pytest
import yaml
from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi

from tests.support import kubelet
from tests.support.adapters import TestAdapter, make_lora_adapter, reference_generate, upload_dir
from tests.support.controlplane import REPO_ROOT, ControlPlane
from tests.support.http import call_json
from tests.support.kubelet import wait_for
from tests.support.node import NodePod, service_urls
from tests.support.operator_process import OperatorProcess
from tests.support.s3_server import REGION, S3Process, start_s3_server
from tests.support.tiny_model import build_tiny_llama

pytestmark = pytest.mark.integration
GROUP, VERSION = "peft.dev", "v1alpha1"
PLATFORM = "keys-platform"
TENANTS = {"keys-a": ("tenant-a", "pirate"), "keys-b": ("tenant-b", "formal")}  # namespace -> S3 tenant, adapter
BASE_URI = "pvc://models/tiny"
BASE_NAME = "tiny"  # the base model's served name (the model folder's)
TENANCY = REPO_ROOT / "examples" / "tenancy"
ACCESS_DIR = "/var/run/peft-access"  # the engine pod's keyring volume (adapterdeployment/engine.py)
PROMPT = "hello"


@dataclass
class KeyedPlatform:
    cp: ControlPlane
    admin: ApiClient
    s3: S3Process
    model_dir: Path
    adapters: dict[str, TestAdapter]
    operator: OperatorProcess
    node_work: Path
    tenants: dict[str, Path] = field(default_factory=dict)  # namespace -> the tenant's token kubeconfig
    nodes: list[NodePod] = field(default_factory=list)

    def as_tenant(self, namespace: str, *args: str, input: str | None = None) -> Any:
        return self.cp.kubectl(*args, kubeconfig=self.tenants[namespace], input=input)

    def attachment(self, namespace: str, name: str) -> dict[str, Any]:
        out = self.as_tenant(namespace, "get", "adat", name, "-n", namespace, "-o", "json").stdout
        return json.loads(out)  # type: ignore[no-any-return]

    def ready(self, namespace: str, name: str) -> bool:
        conditions = (self.attachment(namespace, name).get("status") or {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def secret(self, namespace: str, name: str) -> Any | None:
        found = CoreV1Api(self.admin).list_namespaced_secret(namespace, field_selector=f"metadata.name={name}").items
        return found[0] if found else None

    def key(self, namespace: str, secret: str) -> str:
        """What a client pod mounting the Secret reads."""
        value = self.secret(namespace, secret)
        assert value is not None, f"no Secret {namespace}/{secret}"
        return base64.b64decode(value.data["apiKey"]).decode()

    def url(self) -> str:
        """Where a client of the engine Service lands, as kube-proxy would route it."""
        return wait_for("the Service's endpoint", lambda: service_urls(self.admin, PLATFORM, "shared"), 30)[0]

    def client(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url() + "/v1", api_key=key, max_retries=0, timeout=60)


def _onboard(platform: KeyedPlatform, namespace: str) -> None:
    s3_tenant, adapter = TENANTS[namespace]
    text = (TENANCY / "03-tenant-a.yaml").read_text().replace("tenant-a", namespace)
    platform.cp.kubectl("apply", "-f", "-", input=text)
    platform.tenants[namespace] = platform.cp.service_account_kubeconfig(namespace, "ml-pipeline", create=False)
    tenant = platform.s3.tenants[s3_tenant]
    keys = tenant.credentials
    data = {
        "AWS_ACCESS_KEY_ID": keys.access_key,
        "AWS_SECRET_ACCESS_KEY": keys.secret_key,
        "AWS_ENDPOINT_URL": platform.s3.endpoint_url,
        "AWS_REGION": REGION,
    }
    CoreV1Api(platform.admin).create_namespaced_secret(namespace, {"metadata": {"name": "s3-keys"}, "stringData": data})
    s3 = boto3.client(
        "s3",
        endpoint_url=platform.s3.endpoint_url,
        region_name=REGION,
        aws_access_key_id=keys.access_key,
        aws_secret_access_key=keys.secret_key,
    )
    uri = upload_dir(s3, tenant.bucket, adapter, platform.adapters[adapter].path)
    attachment = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AdapterAttachment",
        "metadata": {"name": adapter, "namespace": namespace},
        "spec": {
            "adapterDeploymentRef": {"namespace": PLATFORM, "name": "shared"},
            "name": adapter,
            "source": {
                "uri": uri,
                "sha256": platform.adapters[adapter].sha256,
                "credentialsSecretRef": {"name": "s3-keys"},
            },
        },
    }
    platform.as_tenant(namespace, "apply", "-f", "-", input=json.dumps(attachment))


@pytest.fixture(scope="module")
def platform(
    controller_manager: ControlPlane, operator: OperatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KeyedPlatform]:
    root = tmp_path_factory.mktemp("keys")
    model_dir = build_tiny_llama(root / "pvc" / "models" / "tiny")
    adapters = {
        name: make_lora_adapter(model_dir, root / "made" / name, seed=seed, uri=BASE_URI)
        for seed, name in enumerate(["pirate", "formal"], start=21)
    }
    s3 = start_s3_server(bucket_suffix=uuid.uuid4().hex[:8])
    admin = controller_manager.api_client()
    platform = KeyedPlatform(controller_manager, admin, s3, model_dir, adapters, operator, root / "node")
    try:
        docs = list(yaml.safe_load_all((TENANCY / "01-platform.yaml").read_text()))
        deployment = next(d for d in docs if d["kind"] == "AdapterDeployment")
        deployment["metadata"]["namespace"] = PLATFORM
        deployment["spec"].update(
            baseModel={"uri": BASE_URI},
            runtime={"engine": "builtin", "replicas": 1, "resources": {"gpus": 0}},
            limits={"maxAdapters": 8, "maxRank": 16},
            access={"apiKeys": "Required"},
        )
        controller_manager.ensure_namespace(PLATFORM)
        CustomObjectsApi(admin).create_namespaced_custom_object(
            GROUP, VERSION, PLATFORM, "adapterdeployments", deployment
        )
        controller_manager.kubectl("apply", "-f", str(TENANCY / "02-tenant-role.yaml"))
        pod = wait_for(
            "the engine pod", lambda: kubelet.pods_of(admin, PLATFORM, "peft.dev/adapterdeployment=shared"), timeout=60
        )[0]
        work = platform.node_work
        paths = {
            "/mnt/pvc": root / "pvc",
            "/adapters": work / "adapters",
            "/tmp": work / "tmp",
            ACCESS_DIR: work / "access",
        }
        for folder in paths.values():
            folder.mkdir(parents=True, exist_ok=True)
        platform.nodes.append(NodePod(admin, pod, "127.0.0.41", paths, work).start())
        for namespace in TENANTS:
            _onboard(platform, namespace)
        yield platform
    finally:
        for node in platform.nodes:
            node.stop()
        for namespace in (PLATFORM, *TENANTS):
            controller_manager.kubectl(
                "delete", "namespace", namespace, "--wait=false", "--ignore-not-found", check=False
            )
        s3.stop()
        admin.close()


def test_each_tenant_gets_its_key_in_its_own_namespace_owned_by_its_attachment(platform: KeyedPlatform) -> None:
    for namespace, (_, adapter) in TENANTS.items():
        wait_for(f"{namespace}/{adapter} Ready", lambda ns=namespace, a=adapter: platform.ready(ns, a), 180)
        status = platform.attachment(namespace, adapter)["status"]
        assert status["apiKeySecretRef"] == {"name": f"{adapter}-api-key"}
        secret = platform.secret(namespace, f"{adapter}-api-key")
        assert secret is not None and set(secret.data) == {"apiKey"}
        owner = secret.metadata.owner_references[0]
        uid = platform.attachment(namespace, adapter)["metadata"]["uid"]
        assert (owner.kind, owner.name, owner.uid) == ("AdapterAttachment", adapter, uid)
    assert platform.key("keys-a", "pirate-api-key") != platform.key("keys-b", "formal-api-key")
    # The deployment's own keys live in its namespace: the platform key (the base model; no adapters listed).
    assert platform.secret(PLATFORM, "shared-api-key") is not None


def test_a_tenants_key_calls_its_own_adapter_through_the_service(platform: KeyedPlatform) -> None:
    client = platform.client(platform.key("keys-a", "pirate-api-key"))
    answer = client.completions.create(model="keys-a/pirate", prompt=PROMPT, max_tokens=4)

    expected = reference_generate(platform.model_dir, platform.adapters["pirate"].path, [PROMPT], 4)[0]
    assert answer.model == "keys-a/pirate" and answer.choices[0].text == expected
    assert [m.id for m in client.models.list()] == ["keys-a/pirate"]
    other = platform.client(platform.key("keys-b", "formal-api-key"))
    assert other.completions.create(model="keys-b/formal", prompt=PROMPT, max_tokens=2).model == "keys-b/formal"


def test_another_tenants_adapter_and_the_base_model_are_403_and_no_key_is_401(platform: KeyedPlatform) -> None:
    key_a = platform.key("keys-a", "pirate-api-key")
    for model in ("keys-b/formal", BASE_NAME):
        with pytest.raises(openai.PermissionDeniedError) as refused:
            platform.client(key_a).completions.create(model=model, prompt=PROMPT, max_tokens=2)
        assert isinstance(refused.value.body, dict) and refused.value.body["reason"] == "ModelNotGranted"
        assert model in refused.value.body["message"] and key_a not in json.dumps(refused.value.body)
    # No key at all (the openai client insists on one, so a plain HTTP call).
    status, answer = call_json(platform.url() + "/v1/completions", "POST", {"model": "keys-a/pirate", "prompt": PROMPT})
    assert (status, answer["error"]["reason"]) == (401, "MissingApiKey")
    platform_key = platform.key(PLATFORM, "shared-api-key")
    assert platform.client(platform_key).completions.create(model=BASE_NAME, prompt=PROMPT, max_tokens=2).model == (
        BASE_NAME
    )
    with pytest.raises(openai.PermissionDeniedError):
        platform.client(platform_key).completions.create(model="keys-a/pirate", prompt=PROMPT, max_tokens=2)


def test_no_tenant_key_appears_in_the_platform_namespace_only_its_digest_in_the_pod(platform: KeyedPlatform) -> None:
    import hashlib

    keys = [platform.key("keys-a", "pirate-api-key"), platform.key("keys-b", "formal-api-key")]
    needles = keys + [base64.b64encode(k.encode()).decode() for k in keys]
    kinds = platform.cp.kubectl("api-resources", "--namespaced", "--verbs=list", "-o", "name").stdout.split()
    assert "secrets" in kinds and "adapterdeployments.peft.dev" in kinds and "events" in kinds
    dumps = {kind: platform.cp.kubectl("get", kind, "-n", PLATFORM, "-o", "json").stdout for kind in kinds}
    assert json.loads(dumps["secrets"])["items"], "the platform namespace has Secrets (admin token, platform key)"
    node = platform.nodes[0]
    logs = {"operator": platform.operator.log_text(), **{f"pod/{n}": node.log(n) for n in node.processes}}
    assert "Keyring" in logs["pod/engine-gate"]  # the gate's log was live and loaded keys
    leaks = [(where, n[:4]) for where, text in {**dumps, **logs}.items() for n in needles if n in text]
    assert leaks == []
    keyring = (platform.node_work / "access" / "keyring.json").read_text()
    assert all(hashlib.sha256(k.encode()).hexdigest() in keyring and k not in keyring for k in keys)


def test_a_secret_the_tenant_made_under_the_keys_name_grants_nothing_and_blocks_no_one(
    platform: KeyedPlatform,
) -> None:
    """keys-b creates `decoy-api-key` itself, then attaches `decoy`: the operator does not adopt a Secret it
    did not issue, so that attachment gets no key (and its status names none), while every other key works."""
    core = CoreV1Api(platform.admin)
    planted = {"metadata": {"name": "decoy-api-key"}, "stringData": {"apiKey": "chosen-by-the-tenant"}}
    core.create_namespaced_secret("keys-b", planted)
    formal = platform.attachment("keys-b", "formal")["spec"]["source"]
    attachment = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AdapterAttachment",
        "metadata": {"name": "decoy", "namespace": "keys-b"},
        "spec": {"adapterDeploymentRef": {"namespace": PLATFORM, "name": "shared"}, "name": "decoy", "source": formal},
    }
    platform.as_tenant("keys-b", "apply", "-f", "-", input=json.dumps(attachment))

    wait_for("keys-b/decoy Ready", lambda: platform.ready("keys-b", "decoy"), 180)
    assert "apiKeySecretRef" not in platform.attachment("keys-b", "decoy")["status"]
    with pytest.raises(openai.AuthenticationError):
        platform.client("chosen-by-the-tenant").completions.create(model="keys-b/decoy", prompt=PROMPT, max_tokens=1)
    key_a = platform.key("keys-a", "pirate-api-key")
    assert platform.client(key_a).completions.create(model="keys-a/pirate", prompt=PROMPT, max_tokens=1).model == (
        "keys-a/pirate"
    )
    assert platform.secret("keys-b", "decoy-api-key").metadata.owner_references is None  # left as the tenant made it


def test_deleting_an_attachment_revokes_its_key(platform: KeyedPlatform) -> None:
    key_a = platform.key("keys-a", "pirate-api-key")
    platform.as_tenant("keys-a", "delete", "adat", "pirate", "-n", "keys-a")

    def revoked() -> bool:
        try:
            platform.client(key_a).completions.create(model="keys-a/pirate", prompt=PROMPT, max_tokens=1)
        except openai.AuthenticationError as error:
            return isinstance(error.body, dict) and error.body["reason"] == "InvalidApiKey"
        return False

    wait_for("tenant A's key refused", revoked, 60)
    other = platform.client(platform.key("keys-b", "formal-api-key"))
    assert other.completions.create(model="keys-b/formal", prompt=PROMPT, max_tokens=1).model == "keys-b/formal"
    # The garbage collector takes the key's Secret with its owner.
    wait_for("tenant A's key Secret deleted", lambda: platform.secret("keys-a", "pirate-api-key") is None, 60)
