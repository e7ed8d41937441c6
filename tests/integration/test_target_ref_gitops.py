"""Integration: `targetRef` on a Deployment that a GitOps tool owns, against the real kube-apiserver and
controller manager, with REAL engine and agent processes for every pod (tests/support/node.py).

The owner's Deployment runs the built-in engine (`peft-runtime serve`: it speaks vLLM's load protocol, and
real vLLM pods are tests/vllm's job). The owner applies its manifest the two ways GitOps tools do:
server-side apply under Argo CD's field manager (`argocd-controller`), and client-side `kubectl apply`.
Re-applying the original manifest must leave the operator's sidecar in place and serving, with no writes
and no generation bumps from either side; a `kubectl replace` (Argo CD's Replace=true) that drops the
sidecar gets it back once; deleting the AdapterDeployment leaves the Deployment as the owner wrote it.
Also: an adapter from a FineTuneJob's private bucket (keys checked), vLLM flags the owner's manifest lacks,
readinessGates the owner holds, and an engine gate in the owner's manifest."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient, AppsV1Api, CoreV1Api, CustomObjectsApi

from peft_operator.api.events import CompletedEvent
from peft_operator.api.finetunejob import AdapterRecord, Progress
from tests.support import kubelet
from tests.support.adapters import TestAdapter, make_lora_adapter
from tests.support.controlplane import ControlPlane
from tests.support.http import call_json
from tests.support.kubelet import wait_for
from tests.support.node import NodePod
from tests.support.operator_process import OperatorProcess
from tests.support.s3_server import S3Process, start_s3_server
from tests.support.tiny_model import build_tiny_llama

pytestmark = pytest.mark.integration
GROUP, VERSION = "peft.dev", "v1alpha1"
BASE_URI = "pvc://models/tiny"
NAMESPACE = "target-gitops"
TOKEN = "engine-admin-token-for-the-tests-0123456789"
REAPPLIES = 4


@dataclass
class Cluster:
    cp: ControlPlane
    admin: ApiClient
    root: Path
    operator: OperatorProcess
    adapters: dict[str, TestAdapter]
    s3: S3Process
    next_ip: int = 20

    @property
    def apps(self) -> AppsV1Api:
        return AppsV1Api(self.admin)

    @property
    def custom(self) -> CustomObjectsApi:
        return CustomObjectsApi(self.admin)

    def metric(self, name: str, adep: str) -> float:
        prefix = f'{name}{{name="{adep}",namespace="{NAMESPACE}"}}'
        lines = [line for line in self.operator.metrics().splitlines() if line.startswith(prefix)]
        return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0

    def passes(self) -> float:
        for line in self.operator.metrics().splitlines():
            if line.startswith('peft_operator_reconciles_total{kind="AdapterDeployment"}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def wait_passes(self, count: int) -> None:
        """At least `count` more AdapterDeployment passes and one resync period (10 s: every object's re-check)."""
        target, not_before = self.passes() + count, time.monotonic() + 11
        wait_for(
            f"{count} more reconcile passes",
            lambda: self.passes() >= target and time.monotonic() >= not_before,
            timeout=90,
        )


@pytest.fixture(scope="module")
def cluster(
    controller_manager: ControlPlane, operator: OperatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("target")
    model = build_tiny_llama(root / "pvc" / "models" / "tiny")
    adapters = {"tenant-a": make_lora_adapter(model, root / "pvc" / "team-adapters" / "tenant-a", seed=1, uri=BASE_URI)}
    adapters["tenant-s3"] = make_lora_adapter(model, root / "s3-upload" / "tenant-s3", seed=2, uri=BASE_URI)
    s3 = start_s3_server("target")
    controller_manager.ensure_namespace(NAMESPACE)
    admin = controller_manager.api_client()
    core = CoreV1Api(admin)
    core.create_namespaced_secret(NAMESPACE, {"metadata": {"name": "engine-admin"}, "stringData": {"token": TOKEN}})
    tenant = s3.tenants["tenant-a"]
    core.create_namespaced_secret(
        NAMESPACE,
        {
            "metadata": {"name": "tenant-a-s3"},
            "stringData": {
                "AWS_ENDPOINT_URL": s3.endpoint_url,
                "AWS_ACCESS_KEY_ID": tenant.credentials.access_key,
                "AWS_SECRET_ACCESS_KEY": tenant.credentials.secret_key,
                "AWS_DEFAULT_REGION": "us-east-1",
            },
        },
    )
    # Every process the node starts inherits this environment: no ambient S3 keys, so a private bucket
    # is readable only with the keys the pod spec gives the agent.
    with pytest.MonkeyPatch.context() as env:
        for name in [k for k in os.environ if k.startswith("AWS_")]:
            env.delenv(name)
        yield Cluster(controller_manager, admin, root, operator, adapters, s3)
    s3.stop()
    admin.close()


def owners_manifest(name: str, command: list[str] | None = None) -> dict[str, Any]:
    """What the owner keeps in Git: an engine Deployment with nothing of the operator's in it."""
    engine = {
        "name": "server",
        "image": "registry.test/peft-runtime:test",
        "command": command
        or [
            "peft-runtime",
            "serve",
            "--model=/mnt/pvc/models/tiny",
            "--port=8000",
            "--served-model-name=tiny",
            "--max-adapters=8",
            "--max-rank=16",
        ],
        # The built-in engine's load API takes the AdapterDeployment's admin token (spec.tokenSecretRef).
        "env": [{"name": "PEFT_ADMIN_TOKEN", "valueFrom": {"secretKeyRef": {"name": "engine-admin", "key": "token"}}}],
        "ports": [{"name": "http", "containerPort": 8000}],
        "readinessProbe": {"httpGet": {"path": "/health", "port": 8000}, "periodSeconds": 5},
        "volumeMounts": [{"name": "models", "mountPath": "/mnt/pvc/models", "readOnly": True}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": name}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [engine],
                    "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}}],
                },
            },
        },
    }


@dataclass
class Equipped:
    """One owner Deployment and the AdapterDeployment that targets it, with its pods on the test node."""

    cluster: Cluster
    name: str
    apply_mode: str  # "server-side" (Argo CD's manager) or "client-side" (kubectl apply)
    manifest: dict[str, Any]
    nodes: dict[str, NodePod] = field(default_factory=dict)

    def owner_applies(self) -> None:
        text = yaml.safe_dump(self.manifest)
        if self.apply_mode == "server-side":
            args = ["apply", "--server-side", "--field-manager=argocd-controller", "--force-conflicts", "-f", "-"]
        else:
            args = ["apply", "-f", "-"]
        self.cluster.cp.kubectl(*args, input=text)

    def deployment(self) -> dict[str, Any]:
        live = self.cluster.apps.read_namespaced_deployment(self.name, NAMESPACE)
        return self.cluster.admin.sanitize_for_serialization(live)  # type: ignore[no-any-return]

    def adep(self) -> dict[str, Any]:
        return self.cluster.custom.get_namespaced_custom_object(  # type: ignore[no-any-return]
            GROUP, VERSION, NAMESPACE, "adapterdeployments", self.name
        )

    def create_adep(self, adapters: list[dict[str, Any]], engine_port: int = 8000) -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "AdapterDeployment",
            "metadata": {"name": self.name, "namespace": NAMESPACE},
            "spec": {
                "baseModel": {"uri": BASE_URI},
                "targetRef": {"name": self.name, "container": "server", "port": engine_port},
                "tokenSecretRef": {"name": "engine-admin", "key": "token"},
                "limits": {"maxAdapters": 8, "maxRank": 16},
                "adapters": adapters,
            },
        }
        self.cluster.custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "adapterdeployments", body)

    def states(self) -> dict[str, tuple[str, int]]:
        status = self.adep().get("status") or {}
        return {a["name"]: (a["state"], a.get("loadedReplicas", 0)) for a in status.get("adapters", [])}

    def labelled_pods(self) -> list[Any]:
        pods = kubelet.pods_of(self.cluster.admin, NAMESPACE, f"peft.dev/adapterdeployment={self.name}")
        return [p for p in pods if not p.metadata.deletion_timestamp]

    def start_new_pods(self) -> None:
        for pod in self.labelled_pods():
            if pod.metadata.name in self.nodes:
                continue
            ip = f"127.0.0.{self.cluster.next_ip}"
            self.cluster.next_ip += 1
            work = self.cluster.root / f"node-{ip}"
            paths = {"/mnt/pvc": self.cluster.root / "pvc", "/adapters": work / "adapters", "/tmp": work / "tmp"}
            for folder in paths.values():
                folder.mkdir(parents=True, exist_ok=True)
            self.nodes[pod.metadata.name] = NodePod(self.cluster.admin, pod, ip, paths, work).start()

    def stop_gone_pods(self) -> None:
        alive = {p.metadata.name for p in self.labelled_pods()}
        for name in [n for n in self.nodes if n not in alive]:
            self.nodes.pop(name).stop()

    def served(self, node: NodePod) -> set[str]:
        return {m["id"] for m in node.get("/v1/models")["data"] if m.get("parent")}

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()


def entry(cluster: Cluster, name: str) -> dict[str, Any]:
    return {"name": name, "source": {"uri": f"pvc://team-adapters/{name}", "sha256": cluster.adapters[name].sha256}}


def report_ready(cluster: Cluster, pod: Any) -> None:
    """What the kubelet does once every container is ready and the operator set the readiness gate: the pod
    is Ready, so the Deployment counts it available and retires the old ReplicaSet's pods."""
    now = kubelet.now()
    conditions = [{"type": t, "status": "True", "lastTransitionTime": now} for t in ("Ready", "ContainersReady")]
    CoreV1Api(cluster.admin).patch_namespaced_pod_status(
        pod.metadata.name,
        NAMESPACE,
        {"status": {"conditions": conditions}},
        _content_type="application/strategic-merge-patch+json",
    )


def gate_is_true(cluster: Cluster, pod_name: str) -> bool:
    pod = CoreV1Api(cluster.admin).read_namespaced_pod(pod_name, NAMESPACE)
    return any(c.type == "peft.dev/adapters-loaded" and c.status == "True" for c in pod.status.conditions or [])


def equip(
    cluster: Cluster, name: str, apply_mode: str, manifest: dict[str, Any] | None = None, engine_port: int = 8000
) -> tuple[Equipped, dict[str, Any]]:
    """The owner applies its Deployment, then an AdapterDeployment targets it and serves tenant-a."""
    equipped = Equipped(cluster, name, apply_mode, manifest or owners_manifest(name))
    equipped.owner_applies()
    as_written = equipped.deployment()
    equipped.create_adep([entry(cluster, "tenant-a")], engine_port)
    pod = wait_for("the operator's pod", equipped.labelled_pods, timeout=60)[0]
    equipped.start_new_pods()
    wait_for("tenant-a Loaded", lambda: equipped.states().get("tenant-a") == ("Loaded", 1), timeout=120)
    wait_for("the readiness gate", lambda: gate_is_true(cluster, pod.metadata.name), timeout=60)
    report_ready(cluster, pod)
    # The rollout completes: the owner's first pod (no agent, never started here) is retired.
    wait_for(
        "only the equipped pod left",
        lambda: (
            [p.metadata.name for p in kubelet.pods_of(cluster.admin, NAMESPACE, f"app={name}")] == [pod.metadata.name]
        ),
        timeout=60,
    )
    return equipped, as_written


def assert_serves(equipped: Equipped, adapters: set[str]) -> None:
    for node in equipped.nodes.values():
        assert equipped.served(node) == adapters
        for adapter in adapters:
            assert node.complete(adapter)["model"] == adapter


def reapply_and_count(equipped: Equipped) -> tuple[int, float]:
    """Re-apply the owner's original manifest REAPPLIES times, each followed by operator passes; return the
    Deployment generation bumps and the operator's applies that followed."""
    cluster = equipped.cluster
    generation = equipped.deployment()["metadata"]["generation"]
    applies = cluster.metric("peft_operator_target_applies_total", equipped.name)
    for _ in range(REAPPLIES):
        equipped.owner_applies()
        cluster.wait_passes(2)
    bumps = equipped.deployment()["metadata"]["generation"] - generation
    return bumps, cluster.metric("peft_operator_target_applies_total", equipped.name) - applies


def assert_released(equipped: Equipped, as_written: dict[str, Any]) -> None:
    """Deleting the AdapterDeployment leaves the Deployment's spec and labels as the owner wrote them."""
    equipped.cluster.custom.delete_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, "adapterdeployments", equipped.name
    )

    def released() -> dict[str, Any] | None:
        live = equipped.deployment()
        return live if "peft.dev/target-of" not in (live["metadata"].get("labels") or {}) else None

    live = wait_for("the operator's fields removed", released, timeout=90)
    assert live["spec"]["template"] == as_written["spec"]["template"]
    assert live["metadata"]["labels"] == as_written["metadata"]["labels"]
    assert "peft.dev/target-config" not in (live["metadata"].get("annotations") or {})
    assert {m["manager"] for m in live["metadata"]["managedFields"]} & {"peft-operator"} == set()


@pytest.fixture
def ssa_owned(cluster: Cluster) -> Iterator[tuple[Equipped, dict[str, Any]]]:
    equipped, as_written = equip(cluster, "llm-argocd", "server-side")
    yield equipped, as_written
    equipped.stop()


@pytest.fixture
def kubectl_owned(cluster: Cluster) -> Iterator[tuple[Equipped, dict[str, Any]]]:
    equipped, as_written = equip(cluster, "llm-kubectl", "client-side")
    yield equipped, as_written
    equipped.stop()


def test_server_side_owner_reapplies_without_a_fight_and_private_s3_and_replace_and_release(
    cluster: Cluster, ssa_owned: tuple[Equipped, dict[str, Any]]
) -> None:
    equipped, as_written = ssa_owned
    live = equipped.deployment()
    assert [c["name"] for c in live["spec"]["template"]["spec"]["containers"]] == ["server", "adapter-agent"]
    server = live["spec"]["template"]["spec"]["containers"][0]
    assert server["command"] == as_written["spec"]["template"]["spec"]["containers"][0]["command"], "args untouched"
    assert_serves(equipped, {"tenant-a"})
    # The built-in engine needs no vLLM flags: nothing to tell the owner.
    conditions = {c["type"]: c for c in equipped.adep()["status"]["conditions"]}
    assert conditions["EngineConfigured"]["status"] == "True"

    bumps, applies = reapply_and_count(equipped)
    print(f"\nserver-side owner: {REAPPLIES} re-applies -> {bumps} generation bumps, {applies:.0f} operator applies")
    assert (bumps, applies) == (0, 0)
    assert_serves(equipped, {"tenant-a"})

    # A FineTuneJob's adapter on a private bucket: the agent needs the job's output credentials.
    adapter = cluster.adapters["tenant-s3"]
    bucket = cluster.s3.tenants["tenant-a"].bucket
    _upload(cluster, adapter.path, bucket, "adapters/tenant-s3")
    _finish_finetunejob(cluster, f"s3://{bucket}/adapters/tenant-s3", adapter.sha256)
    first_pod = next(iter(equipped.nodes))
    adapters = [entry(cluster, "tenant-a"), {"name": "tenant-s3", "source": {"fineTuneJobRef": {"name": "s3-job"}}}]
    cluster.custom.patch_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, "adapterdeployments", equipped.name, {"spec": {"adapters": adapters}}
    )
    agent = wait_for(
        "the output Secret on the agent",
        lambda: next(
            (
                c
                for c in equipped.deployment()["spec"]["template"]["spec"]["containers"]
                if c["name"] == "adapter-agent" and c.get("envFrom")
            ),
            None,
        ),
        timeout=60,
    )
    assert agent["envFrom"] == [{"prefix": "ADAPTER_TENANT_A_S3_", "secretRef": {"name": "tenant-a-s3"}}]
    wait_for("the rolled-out pod", lambda: len(equipped.labelled_pods()) == 2, timeout=60)
    equipped.start_new_pods()
    new_pod = next(p for p in equipped.labelled_pods() if p.metadata.name != first_pod)
    wait_for("the new pod's readiness gate", lambda: gate_is_true(cluster, new_pod.metadata.name), timeout=120)
    report_ready(cluster, new_pod)
    wait_for("the old pod retired", lambda: len(equipped.labelled_pods()) == 1, timeout=60)
    equipped.stop_gone_pods()
    wait_for(
        "both adapters Loaded",
        lambda: equipped.states() == {"tenant-a": ("Loaded", 1), "tenant-s3": ("Loaded", 1)},
        timeout=180,
    )
    assert_serves(equipped, {"tenant-a", "tenant-s3"})

    # Argo CD's Replace=true (or `kubectl replace`) drops every field it does not have: put back once.
    generation = equipped.deployment()["metadata"]["generation"]
    applies = cluster.metric("peft_operator_target_applies_total", equipped.name)
    cluster.cp.kubectl("replace", "-f", "-", input=yaml.safe_dump(equipped.manifest))
    wait_for(
        "the sidecar back",
        lambda: "adapter-agent" in [c["name"] for c in equipped.deployment()["spec"]["template"]["spec"]["containers"]],
        timeout=60,
    )
    cluster.wait_passes(4)
    after = equipped.deployment()["metadata"]["generation"]
    restored = cluster.metric("peft_operator_target_applies_total", equipped.name) - applies
    print(
        f"replace: {after - generation} generation bumps (the replace and the operator's one apply), {restored:.0f} applies"
    )
    assert (after - generation, restored) == (2, 1)
    equipped.start_new_pods()  # the restored template is the serving pod's: its ReplicaSet is reused
    assert [p.metadata.name for p in equipped.labelled_pods()] == [new_pod.metadata.name]
    assert_serves(equipped, {"tenant-a", "tenant-s3"})

    assert_released(equipped, as_written)


def test_client_side_kubectl_apply_owner_reapplies_without_a_fight_and_release(
    cluster: Cluster, kubectl_owned: tuple[Equipped, dict[str, Any]]
) -> None:
    equipped, as_written = kubectl_owned
    assert_serves(equipped, {"tenant-a"})
    bumps, applies = reapply_and_count(equipped)
    print(f"\nkubectl apply owner: {REAPPLIES} re-applies -> {bumps} generation bumps, {applies:.0f} operator applies")
    assert (bumps, applies) == (0, 0)
    assert_serves(equipped, {"tenant-a"})
    pods = [p.metadata.name for p in equipped.labelled_pods()]
    assert pods == list(equipped.nodes), "no new pods: the template never changed"
    # The last-applied annotation kubectl keeps is the owner's manifest alone: nothing of the operator's.
    last = equipped.deployment()["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
    assert "adapter-agent" not in last
    assert_released(equipped, as_written)


def test_a_vllm_manifest_without_lora_flags_is_told_exactly_which_to_add(cluster: Cluster) -> None:
    command = ["vllm", "serve", "/models/tiny", "--port=8000", "--max-lora-rank=8"]
    equipped = Equipped(cluster, "vllm-noflags", "server-side", owners_manifest("vllm-noflags", command))
    equipped.owner_applies()
    equipped.create_adep([entry(cluster, "tenant-a")])

    def engine_configured() -> dict[str, Any] | None:
        conditions = (equipped.adep().get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == "EngineConfigured"), None)

    condition = wait_for("EngineConfigured", engine_configured, timeout=60)
    flags = "--enable-lora --max-loras=8 --max-cpu-loras=8 --max-lora-rank=16"
    assert (condition["status"], condition["reason"]) == ("False", "LoRAFlagsMissing")
    assert f"add {flags} to its args" in condition["message"]
    warning = wait_for(
        "the LoRAFlagsMissing Warning",
        lambda: next(
            (
                e
                for e in CoreV1Api(cluster.admin).list_namespaced_event(NAMESPACE).items
                if e.reason == "LoRAFlagsMissing" and e.involved_object.name == "vllm-noflags"
            ),
            None,
        ),
        timeout=30,
    )
    assert warning.type == "Warning" and flags in warning.message
    # The operator did not touch the args: the owner's manifest stays the only writer of them.
    server = equipped.deployment()["spec"]["template"]["spec"]["containers"][0]
    assert server["command"] == command and "args" not in server

    # The owner adds the flags in Git and re-applies: the condition clears.
    equipped.manifest["spec"]["template"]["spec"]["containers"][0]["command"] = [*command[:-1], *flags.split()]
    equipped.owner_applies()
    wait_for("EngineConfigured True", lambda: (engine_configured() or {}).get("status") == "True", timeout=60)


def test_an_owner_that_writes_its_own_readiness_gates_is_told_to_add_ours(cluster: Cluster) -> None:
    manifest = owners_manifest("llm-gated")
    manifest["spec"]["template"]["spec"]["readinessGates"] = [{"conditionType": "example.com/warm"}]
    equipped = Equipped(cluster, "llm-gated", "server-side", manifest)
    equipped.owner_applies()
    equipped.create_adep([entry(cluster, "tenant-a")])

    def degraded() -> dict[str, Any] | None:
        conditions = (equipped.adep().get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == "Degraded" and c["status"] == "True"), None)

    condition = wait_for("Degraded", degraded, timeout=60)
    assert condition["reason"] == "TargetFieldConflict"
    assert "argocd-controller" in condition["message"] and ".spec.template.spec.readinessGates" in condition["message"]
    assert "peft.dev/adapters-loaded" in condition["message"]
    assert "adapter-agent" not in str(equipped.deployment()["spec"]), "a refused apply writes nothing"
    # The owner follows the advice: both gates in its manifest, and the operator's apply goes through.
    gates = manifest["spec"]["template"]["spec"]["readinessGates"]
    gates.append({"conditionType": "peft.dev/adapters-loaded"})
    equipped.owner_applies()
    wait_for(
        "the sidecar",
        lambda: "adapter-agent" in [c["name"] for c in equipped.deployment()["spec"]["template"]["spec"]["containers"]],
        timeout=60,
    )
    assert equipped.deployment()["spec"]["template"]["spec"]["readinessGates"] == gates


def test_an_engine_gate_in_the_owners_manifest_keeps_clients_off_the_admin_routes(cluster: Cluster) -> None:
    """The operator cannot put its engine gate in front of an engine it does not own (the Service and the
    engine's port are the owner's); the owner can: the engine on loopback :8080, `peft-runtime gate` on the
    Service's port, targetRef.port 8080. The agent loads on loopback; clients of :8000 cannot."""
    manifest = owners_manifest("llm-gated-engine")
    server = manifest["spec"]["template"]["spec"]["containers"][0]
    server["command"] = [
        *(a for a in server["command"] if not a.startswith("--port=")),
        "--host=127.0.0.1",
        "--port=8080",
    ]
    del server["ports"], server["readinessProbe"]
    gate = {
        "name": "gate",
        "image": "registry.test/peft-runtime:test",
        "command": ["peft-runtime", "gate", "--engine-url=http://127.0.0.1:8080", "--port=8000"],
        "ports": [{"name": "http", "containerPort": 8000}],
        "readinessProbe": {"httpGet": {"path": "/health", "port": 8000}, "periodSeconds": 5},
    }
    manifest["spec"]["template"]["spec"]["containers"].append(gate)
    equipped, _ = equip(cluster, "llm-gated-engine", "server-side", manifest, engine_port=8080)
    try:
        node = next(iter(equipped.nodes.values()))
        client_port = f"http://{node.ip}:8000"
        intruder = {"lora_name": "intruder", "lora_path": str(cluster.adapters["tenant-a"].path)}
        for route, body in (
            ("/v1/load_lora_adapter", intruder),
            ("/v1/unload_lora_adapter", {"lora_name": "tenant-a"}),
        ):
            status, answer = call_json(client_port + route, "POST", body, TOKEN, 30)
            assert (status, answer["error"]["reason"]) == (403, "AdminRoute"), answer
        status, answer = call_json(
            client_port + "/v1/completions", "POST", {"model": "tenant-a", "prompt": "hi", "max_tokens": 2}
        )
        assert (status, answer["model"]) == (200, "tenant-a"), answer
        assert equipped.served(node) == {"tenant-a"}
    finally:
        equipped.stop()


def _upload(cluster: Cluster, folder: Path, bucket: str, prefix: str) -> None:
    import boto3

    keys = cluster.s3.tenants["tenant-a"].credentials
    s3 = boto3.client(
        "s3",
        endpoint_url=cluster.s3.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=keys.access_key,
        aws_secret_access_key=keys.secret_key,
    )
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            s3.put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(folder)}", Body=path.read_bytes())


def _finish_finetunejob(cluster: Cluster, uri: str, sha256: str) -> None:
    """A FineTuneJob whose output went to the private bucket with the tenant's keys; the test plays its
    trainer pod's end (the real trainer's upload with those keys is tests/runtime/test_storage_credentials)."""
    job = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": "s3-job", "namespace": NAMESPACE},
        "spec": {
            "baseModel": {"uri": BASE_URI},
            "dataset": {"uri": "pvc://team-data/s3.jsonl", "format": "instruction"},
            "method": {"type": "lora", "lora": {"r": 4}},
            "resources": {"gpus": 0},
            "output": {"uri": uri, "credentialsSecretRef": {"name": "tenant-a-s3"}},
        },
    }
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "finetunejobs", job)
    pod = wait_for("the trainer pod", lambda: kubelet.pods_of(cluster.admin, NAMESPACE, "peft.dev/finetunejob=s3-job"))[
        0
    ]
    record = AdapterRecord(uri=uri, sha256=sha256, size_bytes=1, base_model=BASE_URI, method="lora", rank=4)
    final = CompletedEvent(adapter=record, progress=Progress(step=10, total_steps=10))
    kubelet.set_terminated(cluster.admin, pod, 0, "Completed", final.model_dump_json(by_alias=True))
    wait_for(
        "the FineTuneJob Succeeded",
        lambda: (
            (
                cluster.custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "finetunejobs", "s3-job").get(
                    "status"
                )
                or {}
            ).get("phase")
            == "Succeeded"
        ),
        timeout=60,
    )


def test_a_second_adapterdeployment_on_an_equipped_deployment_is_refused(cluster: Cluster) -> None:
    first = Equipped(cluster, "llm-shared", "server-side", owners_manifest("llm-shared"))
    first.owner_applies()
    first.create_adep([entry(cluster, "tenant-a")])
    wait_for(
        "the first one's sidecar",
        lambda: "adapter-agent" in [c["name"] for c in first.deployment()["spec"]["template"]["spec"]["containers"]],
        timeout=60,
    )
    second = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AdapterDeployment",
        "metadata": {"name": "llm-shared-too", "namespace": NAMESPACE},
        "spec": {
            "baseModel": {"uri": BASE_URI},
            "targetRef": {"name": "llm-shared", "container": "server"},
            "limits": {"maxAdapters": 8, "maxRank": 16},
        },
    }
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "adapterdeployments", second)

    def degraded() -> dict[str, Any] | None:
        body = cluster.custom.get_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, "adapterdeployments", "llm-shared-too"
        )
        conditions = (body.get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == "Degraded" and c["status"] == "True"), None)

    condition = wait_for("Degraded", degraded, timeout=60)
    assert condition["reason"] == "TargetTaken" and "AdapterDeployment llm-shared" in condition["message"]
    assert first.deployment()["metadata"]["labels"]["peft.dev/target-of"] == "llm-shared"
