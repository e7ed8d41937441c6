"""Integration: tenants attach adapters from their own namespaces to a shared AdapterDeployment in
`llm-platform`, against the real kube-apiserver and controller manager, the operator as a real process with
the chart's RBAC, a real S3 server that checks each tenant's keys, and real engine + agent processes for the
engine pod (tests/support/node.py).

The tenants act through their own ServiceAccount tokens, bound only to examples/tenancy/02-tenant-role.yaml
in their own namespace. The steps share one deployment and run in order."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from kubernetes.client import ApiClient, ApiException, CoreV1Api, CustomObjectsApi

from peft_operator.api.events import CompletedEvent
from peft_operator.api.finetunejob import AdapterRecord, Progress
from tests.support import kubelet
from tests.support.adapters import TestAdapter, make_lora_adapter, reference_generate, upload_dir
from tests.support.controlplane import REPO_ROOT, ControlPlane
from tests.support.kubelet import wait_for
from tests.support.node import NodePod
from tests.support.operator_process import OperatorProcess
from tests.support.s3_server import REGION, S3Process, Tenant, start_s3_server
from tests.support.tiny_model import build_tiny_llama

pytestmark = pytest.mark.integration
GROUP, VERSION = "peft.dev", "v1alpha1"
PLATFORM = "llm-platform"
BASE_URI = "pvc://models/tiny"
TENANCY = REPO_ROOT / "examples" / "tenancy"
PROMPT = "hello"
TOKENS = 4


@dataclass
class Platform:
    cp: ControlPlane
    admin: ApiClient
    root: Path
    s3: S3Process
    model_dir: Path
    adapters: dict[str, TestAdapter]
    operator: OperatorProcess
    tenants: dict[str, Path] = field(default_factory=dict)  # namespace -> the tenant's token kubeconfig
    nodes: list[NodePod] = field(default_factory=list)

    def as_tenant(self, namespace: str, *args: str, input: str | None = None, check: bool = True) -> Any:
        """kubectl with the tenant's own ServiceAccount token."""
        return self.cp.kubectl(*args, kubeconfig=self.tenants[namespace], input=input, check=check)

    def attach(self, namespace: str, name: str, adapter: str, source: dict[str, Any]) -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "AdapterAttachment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "adapterDeploymentRef": {"namespace": PLATFORM, "name": "shared"},
                "name": adapter,
                "source": source,
            },
        }
        self.as_tenant(namespace, "apply", "-f", "-", input=json.dumps(body))

    def attachment(self, namespace: str, name: str) -> dict[str, Any]:
        """Read by the tenant itself: its status is all it needs to see."""
        return json.loads(self.as_tenant(namespace, "get", "adat", name, "-n", namespace, "-o", "json").stdout)  # type: ignore[no-any-return]

    def conditions(self, namespace: str, name: str) -> dict[str, tuple[str, str]]:
        status = self.attachment(namespace, name).get("status") or {}
        return {c["type"]: (c["status"], c["reason"]) for c in status.get("conditions", [])}

    def adep(self) -> dict[str, Any]:
        return CustomObjectsApi(self.admin).get_namespaced_custom_object(  # type: ignore[no-any-return]
            GROUP, VERSION, PLATFORM, "adapterdeployments", "shared"
        )

    def served(self) -> set[str]:
        models = self.nodes[0].get("/v1/models")["data"]
        return {m["id"] for m in models if m.get("parent")}

    def events(self, namespace: str, involved: str) -> list[Any]:
        items = CoreV1Api(self.admin).list_namespaced_event(namespace).items
        return [e for e in items if e.involved_object.name == involved]

    def s3_uri(self, tenant: Tenant, adapter: str) -> str:
        client = boto3.client(
            "s3",
            endpoint_url=self.s3.endpoint_url,
            region_name=REGION,
            aws_access_key_id=tenant.credentials.access_key,
            aws_secret_access_key=tenant.credentials.secret_key,
        )
        return upload_dir(client, tenant.bucket, adapter, self.adapters[adapter].path)


def _tenant_secret(platform: Platform, namespace: str) -> None:
    """The tenant's S3 keys, in the tenant's namespace (made by whoever runs that namespace)."""
    keys = platform.s3.tenants[namespace].credentials
    data = {
        "AWS_ACCESS_KEY_ID": keys.access_key,
        "AWS_SECRET_ACCESS_KEY": keys.secret_key,
        "AWS_ENDPOINT_URL": platform.s3.endpoint_url,
        "AWS_REGION": REGION,
    }
    CoreV1Api(platform.admin).create_namespaced_secret(namespace, {"metadata": {"name": "s3-keys"}, "stringData": data})


def _onboard(platform: Platform, namespace: str) -> None:
    """examples/tenancy/03-tenant-a.yaml for this tenant, then its token."""
    text = (TENANCY / "03-tenant-a.yaml").read_text().replace("tenant-a", namespace)
    platform.cp.kubectl("apply", "-f", "-", input=text)
    platform.tenants[namespace] = platform.cp.service_account_kubeconfig(namespace, "ml-pipeline", create=False)


@pytest.fixture(scope="module")
def platform(
    controller_manager: ControlPlane, operator: OperatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    root = tmp_path_factory.mktemp("tenancy")
    model_dir = build_tiny_llama(root / "pvc" / "models" / "tiny")
    adapters = {
        name: make_lora_adapter(model_dir, root / "made" / name, seed=seed, uri=BASE_URI)
        for seed, name in enumerate(["pirate", "formal", "intruder", "second"], start=11)
    }
    s3 = start_s3_server(bucket_suffix=uuid.uuid4().hex[:8])
    admin = controller_manager.api_client()
    platform = Platform(controller_manager, admin, root, s3, model_dir, adapters, operator)
    try:
        docs = list(yaml.safe_load_all((TENANCY / "01-platform.yaml").read_text()))
        deployment = next(d for d in docs if d["kind"] == "AdapterDeployment")
        # The example as a platform team applies it, on the tiny model and one CPU replica.
        deployment["spec"].update(
            baseModel={"uri": BASE_URI},
            runtime={"engine": "builtin", "replicas": 1, "resources": {"gpus": 0}},
            limits={"maxAdapters": 8, "maxRank": 16},
        )
        deployment["spec"]["attachments"]["maxPerNamespace"] = 1
        controller_manager.ensure_namespace(PLATFORM)
        CustomObjectsApi(admin).create_namespaced_custom_object(
            GROUP, VERSION, PLATFORM, "adapterdeployments", deployment
        )
        controller_manager.kubectl("apply", "-f", str(TENANCY / "02-tenant-role.yaml"))
        for namespace in ("tenant-a", "tenant-b"):
            _onboard(platform, namespace)
            _tenant_secret(platform, namespace)
        _onboard(platform, "tenant-z")  # onboarded, but its namespace lacks the label the deployment selects
        controller_manager.kubectl("label", "namespace", "tenant-z", "peft.dev/tenant-")
        pod = wait_for(
            "the engine pod", lambda: kubelet.pods_of(admin, PLATFORM, "peft.dev/adapterdeployment=shared"), timeout=60
        )[0]
        work = root / "node"
        paths = {"/mnt/pvc": root / "pvc", "/adapters": work / "adapters", "/tmp": work / "tmp"}
        for folder in paths.values():
            folder.mkdir(parents=True, exist_ok=True)
        platform.nodes.append(NodePod(admin, pod, "127.0.0.40", paths, work).start())
        yield platform
    finally:
        for node in platform.nodes:
            node.stop()
        for namespace in (PLATFORM, "tenant-a", "tenant-b", "tenant-z"):
            controller_manager.kubectl(
                "delete", "namespace", namespace, "--wait=false", "--ignore-not-found", check=False
            )
        s3.stop()
        admin.close()


def test_a_tenant_cannot_touch_the_platform_namespace_but_can_attach_in_its_own(platform: Platform) -> None:
    def can(namespace: str, *args: str) -> str:
        result = platform.as_tenant("tenant-a", "auth", "can-i", *args, "-n", namespace, check=False)
        return str(result.stdout.strip())

    assert can("tenant-a", "create", "adapterattachments.peft.dev") == "yes"
    assert can(PLATFORM, "patch", "adapterdeployments.peft.dev") == "no"
    assert can(PLATFORM, "get", "secrets") == "no"
    assert can(PLATFORM, "create", "adapterattachments.peft.dev") == "no"
    assert can("tenant-b", "get", "adapterattachments.peft.dev") == "no"
    refused = platform.as_tenant("tenant-a", "get", "adep", "shared", "-n", PLATFORM, check=False)
    assert refused.returncode != 0 and "forbidden" in refused.stderr


def test_an_attached_adapter_serves_under_namespace_slash_name_on_the_real_engine(platform: Platform) -> None:
    uri = platform.s3_uri(platform.s3.tenants["tenant-a"], "pirate")
    sha = platform.adapters["pirate"].sha256
    platform.attach(
        "tenant-a", "pirate", "pirate", {"uri": uri, "sha256": sha, "credentialsSecretRef": {"name": "s3-keys"}}
    )

    wait_for(
        "tenant-a/pirate Ready", lambda: platform.conditions("tenant-a", "pirate").get("Ready", ("",))[0] == "True", 120
    )
    status = platform.attachment("tenant-a", "pirate")["status"]
    assert status["servedName"] == "tenant-a/pirate" and status["state"] == "Loaded"
    assert status["loadedReplicas"] == 1 and status["replicas"] == 1 and status["digest"] == sha
    assert status["endpoint"] == f"http://shared.{PLATFORM}.svc:8000/v1"
    assert platform.conditions("tenant-a", "pirate") == {
        "Accepted": ("True", "Accepted"),
        "ResolvedRefs": ("True", "ResolvedRefs"),
        "Ready": ("True", "Loaded"),
    }
    assert platform.served() == {"tenant-a/pirate"}
    answer = platform.nodes[0].complete("tenant-a/pirate", PROMPT, TOKENS)
    expected = reference_generate(platform.model_dir, platform.adapters["pirate"].path, [PROMPT], TOKENS)[0]
    assert answer["model"] == "tenant-a/pirate" and answer["choices"][0]["text"] == expected
    entry = next(a for a in platform.adep()["status"]["adapters"] if a["name"] == "tenant-a/pirate")
    assert entry["state"] == "Loaded" and entry["loadedReplicas"] == 1
    reasons = wait_for(
        "Accepted and AdapterLoaded Events in tenant-a",
        lambda: (r := {e.reason for e in platform.events("tenant-a", "pirate")}) >= {"Accepted", "AdapterLoaded"} and r,
    )
    assert "NotAllowedByDeployment" not in reasons
    # What the tenant sees with its own token: the printer columns and the Events of its namespace.
    table = platform.as_tenant("tenant-a", "get", "adat", "-n", "tenant-a").stdout.split()
    assert table[:6] == ["NAME", "DEPLOYMENT", "ACCEPTED", "READY", "MODEL", "AGE"]
    assert table[6:11] == ["pirate", "shared", "True", "True", "tenant-a/pirate"]
    events = platform.as_tenant("tenant-a", "get", "events", "-n", "tenant-a").stdout
    assert "AdapterLoaded" in events and "Serving tenant-a/pirate on 1 replicas" in events


def test_a_namespace_outside_the_allow_list_is_refused_in_its_own_namespace(platform: Platform) -> None:
    sha = platform.adapters["intruder"].sha256
    platform.attach("tenant-z", "intruder", "pirate", {"uri": "s3://tenant-z-adapters/intruder", "sha256": sha})

    wait_for("Accepted=False", lambda: "Accepted" in platform.conditions("tenant-z", "intruder"), 60)
    conditions = platform.conditions("tenant-z", "intruder")
    assert conditions["Accepted"] == ("False", "NotAllowedByDeployment")
    assert conditions["Ready"] == ("False", "NotAccepted")
    status = platform.attachment("tenant-z", "intruder")["status"]
    assert "namespace tenant-z is not allowed" in status["message"] and status["state"] == "Pending"
    warning = wait_for(
        "a Warning in tenant-z",
        lambda: next(
            (e for e in platform.events("tenant-z", "intruder") if e.reason == "NotAllowedByDeployment"), None
        ),
    )
    assert warning.type == "Warning"
    assert "tenant-z/pirate" not in {a["name"] for a in platform.adep()["status"]["adapters"]}
    assert platform.served() == {"tenant-a/pirate"}


def test_a_second_attachment_over_the_namespaces_quota_is_refused(platform: Platform) -> None:
    uri = platform.s3_uri(platform.s3.tenants["tenant-a"], "second")
    sha = platform.adapters["second"].sha256
    platform.attach(
        "tenant-a", "second", "second", {"uri": uri, "sha256": sha, "credentialsSecretRef": {"name": "s3-keys"}}
    )

    wait_for(
        "QuotaExceeded",
        lambda: platform.conditions("tenant-a", "second").get("Accepted") == ("False", "QuotaExceeded"),
        60,
    )
    assert "maxPerNamespace: 1" in platform.attachment("tenant-a", "second")["status"]["message"]
    assert platform.served() == {"tenant-a/pirate"}


def _train_formal(platform: Platform) -> str:
    """tenant-b's FineTuneJob, created with tenant-b's own token; its trainer pod reports the adapter it wrote
    to tenant-b's bucket (the pod is played by the test, as in the other controller tests)."""
    tenant = platform.s3.tenants["tenant-b"]
    uri = platform.s3_uri(tenant, "formal")
    job = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": "formal-v1", "namespace": "tenant-b"},
        "spec": {
            "baseModel": {"uri": BASE_URI},
            "dataset": {"uri": "pvc://tenant-b-data/formal.jsonl", "format": "instruction"},
            "method": {"type": "lora", "lora": {"r": 4}},
            "resources": {"gpus": 0},
            "output": {"uri": uri, "credentialsSecretRef": {"name": "s3-keys"}},
        },
    }
    platform.as_tenant("tenant-b", "apply", "-f", "-", input=json.dumps(job))
    pod = wait_for(
        "the trainer pod", lambda: kubelet.pods_of(platform.admin, "tenant-b", "peft.dev/finetunejob=formal-v1"), 60
    )[0]
    adapter = platform.adapters["formal"]
    record = AdapterRecord(uri=uri, sha256=adapter.sha256, size_bytes=1, base_model=BASE_URI, method="lora", rank=4)
    final = CompletedEvent(adapter=record, progress=Progress(step=10, total_steps=10))
    kubelet.set_terminated(platform.admin, pod, 0, "Completed", final.model_dump_json(by_alias=True))
    return uri


def test_another_tenant_attaches_its_trained_adapter_under_the_same_name_without_colliding(platform: Platform) -> None:
    platform.attach("tenant-b", "pirate", "pirate", {"fineTuneJobRef": {"name": "formal-v1"}})
    wait_for(
        "RefNotFound while the job does not exist",
        lambda: platform.conditions("tenant-b", "pirate").get("ResolvedRefs") == ("False", "RefNotFound"),
        60,
    )
    _train_formal(platform)

    wait_for(
        "tenant-b/pirate Ready", lambda: platform.conditions("tenant-b", "pirate").get("Ready", ("",))[0] == "True", 120
    )
    assert platform.served() == {"tenant-a/pirate", "tenant-b/pirate"}
    node = platform.nodes[0]
    answers = {name: node.complete(name, PROMPT, TOKENS)["choices"][0]["text"] for name in platform.served()}
    expected = {
        f"{ns}/pirate": reference_generate(platform.model_dir, platform.adapters[made].path, [PROMPT], TOKENS)[0]
        for ns, made in (("tenant-a", "pirate"), ("tenant-b", "formal"))
    }
    assert answers == expected


def test_a_tenant_cannot_unload_another_tenants_adapter(platform: Platform) -> None:
    refused = platform.as_tenant("tenant-a", "delete", "adat", "pirate", "-n", "tenant-b", check=False)
    assert refused.returncode != 0 and "forbidden" in refused.stderr
    with pytest.raises(ApiException) as error:  # nor through the platform's deployment
        CustomObjectsApi(platform.cp.api_client(platform.tenants["tenant-a"])).patch_namespaced_custom_object(
            GROUP, VERSION, PLATFORM, "adapterdeployments", "shared", {"spec": {"attachments": {"from": "All"}}}
        )
    assert error.value.status == 403
    assert platform.served() == {"tenant-a/pirate", "tenant-b/pirate"}


def test_the_tenants_credentials_appear_in_no_object_or_log_of_the_platform_namespace(platform: Platform) -> None:
    secrets = [
        value
        for tenant in ("tenant-a", "tenant-b")
        for value in (
            platform.s3.tenants[tenant].credentials.secret_key,
            platform.s3.tenants[tenant].credentials.access_key,
        )
    ]
    needles = secrets + [base64.b64encode(s.encode()).decode() for s in secrets]
    kinds = platform.cp.kubectl("api-resources", "--namespaced", "--verbs=list", "-o", "name").stdout.split()
    assert "adapterdeployments.peft.dev" in kinds and "secrets" in kinds and "events" in kinds
    dumps = {kind: platform.cp.kubectl("get", kind, "-n", PLATFORM, "-o", "json").stdout for kind in kinds}
    assert json.loads(dumps["secrets"])["items"], "the platform namespace has Secrets (the admin token): scanned"
    logs = {
        "operator": platform.operator.log_text(),
        **{f"pod/{name}": platform.nodes[0].log(name) for name in platform.nodes[0].processes},
    }
    assert "tenant-a/pirate" in logs["operator"] or "tenant-a/pirate" in "".join(logs.values())  # the logs were live
    leaks = [(where, n[:4]) for where, text in {**dumps, **logs}.items() for n in needles if n in text]
    assert leaks == []
    deployment = json.loads(platform.cp.kubectl("get", "deployment", "shared", "-n", PLATFORM, "-o", "json").stdout)
    assert "s3-keys" not in json.dumps(deployment["spec"]["template"]), "no tenant Secret is mounted in the engine pod"


def test_deleting_an_attachment_unloads_it_and_frees_the_quota(platform: Platform) -> None:
    platform.as_tenant("tenant-a", "delete", "adat", "pirate", "-n", "tenant-a")

    wait_for("tenant-a/pirate unloaded", lambda: "tenant-a/pirate" not in platform.served(), 60)
    # The deletion's watch event ran the deployment's pass (not only its 10 s re-check).
    assert "AdapterAttachment tenant-a/pirate was deleted: syncing AdapterDeployment" in platform.operator.log_text()
    # The status is written after the engines are synced.
    wait_for(
        "tenant-a/pirate gone from the deployment's status",
        lambda: "tenant-a/pirate" not in {a["name"] for a in platform.adep()["status"]["adapters"]},
    )
    # The attachment that was over the quota is accepted now, and loads: admission is level-triggered.
    wait_for(
        "tenant-a/second Ready", lambda: platform.conditions("tenant-a", "second").get("Ready", ("",))[0] == "True", 120
    )
    assert platform.served() == {"tenant-a/second", "tenant-b/pirate"}


def test_a_namespace_the_selector_no_longer_matches_loses_its_adapters(platform: Platform) -> None:
    """Admission is re-decided on every pass from live namespace labels: the platform team takes tenant-b out."""
    platform.cp.kubectl("label", "namespace", "tenant-b", "peft.dev/tenant-")

    wait_for(
        "tenant-b/pirate refused",
        lambda: platform.conditions("tenant-b", "pirate").get("Accepted") == ("False", "NotAllowedByDeployment"),
        60,
    )
    wait_for("tenant-b/pirate unloaded", lambda: "tenant-b/pirate" not in platform.served(), 60)
    assert platform.attachment("tenant-b", "pirate")["status"]["state"] == "Pending"
    assert platform.served() == {"tenant-a/second"}


def test_an_attachment_to_a_missing_deployment_says_so(platform: Platform) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AdapterAttachment",
        "metadata": {"name": "lost", "namespace": "tenant-a"},
        "spec": {
            "adapterDeploymentRef": {"namespace": PLATFORM, "name": "no-such-deployment"},
            "name": "lost",
            "source": {"fineTuneJobRef": {"name": "anything"}},
        },
    }
    platform.as_tenant("tenant-a", "apply", "-f", "-", input=json.dumps(body))
    wait_for(
        "NoMatchingParent",
        lambda: platform.conditions("tenant-a", "lost").get("Accepted") == ("False", "NoMatchingParent"),
        60,
    )
