"""Integration: the AdapterDeployment controller against the real kube-apiserver and controller manager,
with REAL engine + agent processes for every pod, each on its own loopback IP (127.0.0.N), started from
the commands in the pod spec the operator rendered. The tests play the node; the operator does the rest.

The steps share one deployment and run in order: hot-load, unload, a corrupt adapter, scale 1 -> 3,
an engine restarted empty, a FineTuneJob whose `deploy` lands its adapter, and that job's deletion, which
leaves the adapter served until it leaves the spec; then no client of the Service can load or unload."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
from kubernetes.client import CoreV1Api, CustomObjectsApi

from peft_operator.api.events import CompletedEvent
from peft_operator.api.finetunejob import AdapterRecord, Progress
from tests.support import kubelet
from tests.support.adapters import corrupt_weights, make_lora_adapter
from tests.support.controlplane import ControlPlane
from tests.support.engine_world import GROUP, VERSION
from tests.support.engine_world import EngineWorld as World
from tests.support.http import call_json
from tests.support.kubelet import wait_for
from tests.support.node import service_urls
from tests.support.operator_process import OperatorProcess, operator_kubeconfig
from tests.support.tiny_model import build_tiny_llama

pytestmark = pytest.mark.integration
BASE_URI = "pvc://models/tiny"


@pytest.fixture(scope="module")
def world(
    controller_manager: ControlPlane, crds_installed: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    root = tmp_path_factory.mktemp("adep")
    model = build_tiny_llama(root / "pvc" / "models" / "tiny")
    adapters = {
        name: make_lora_adapter(model, root / "pvc" / "team-adapters" / name, seed=seed, uri=BASE_URI)
        for seed, name in enumerate(["tenant-a", "tenant-b", "tenant-c", "tenant-bad"], start=1)
    }
    corrupt_weights(adapters["tenant-bad"].path, keep_manifest_valid=False)
    namespace = "adep-it"
    controller_manager.ensure_namespace(namespace)
    operator = OperatorProcess(
        operator_kubeconfig(controller_manager, role="peft-operator-adep"), root / "operator.log"
    ).start()
    admin = controller_manager.api_client()
    world = World(admin, namespace, root, adapters, operator)
    body = {
        "apiVersion": "peft.dev/v1alpha1",
        "kind": "AdapterDeployment",
        "metadata": {"name": "shared", "namespace": namespace},
        "spec": {
            "baseModel": {"uri": BASE_URI},
            "runtime": {"engine": "builtin", "replicas": 1, "resources": {"gpus": 0}},
            "limits": {"maxAdapters": 8, "maxRank": 16},
            "adapters": [world.entry("tenant-a")],
        },
    }
    world.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "adapterdeployments", body)
    wait_for(
        "the engine pod", lambda: kubelet.pods_of(admin, namespace, "peft.dev/adapterdeployment=shared"), timeout=60
    )
    world.start_new_pods()
    yield world
    world.stop()
    operator.stop()
    admin.close()


def test_first_pod_gets_the_adapter_and_becomes_ready(world: World) -> None:
    wait_for("tenant-a Loaded", lambda: world.states().get("tenant-a") == ("Loaded", 1), timeout=120)
    wait_for("Ready", lambda: world.condition("Ready") == "True")
    node = world.nodes[0]
    assert world.served(node) == {"tenant-a"}
    assert node.complete("tenant-a")["choices"][0]["text"] is not None
    pod = CoreV1Api(world.admin).read_namespaced_pod(node.pod.metadata.name, world.namespace)
    gate = next(c for c in pod.status.conditions if c.type == "peft.dev/adapters-loaded")
    assert gate.status == "True"
    status = world.adep()["status"]
    assert status["adaptersReady"] == "1/1" and status["readyReplicas"] == 1
    assert status["endpoint"] == f"http://shared.{world.namespace}.svc:8000/v1"


def test_hot_load_and_unload_without_restarting_the_engine(world: World) -> None:
    node = world.nodes[0]
    engine_pid = node.processes["engine"].pid
    world.set_adapters("tenant-a", "tenant-b")
    wait_for("tenant-b Loaded", lambda: world.states().get("tenant-b") == ("Loaded", 1), timeout=60)
    assert world.served(node) == {"tenant-a", "tenant-b"}
    world.set_adapters("tenant-b")
    wait_for("tenant-a gone", lambda: set(world.states()) == {"tenant-b"}, timeout=60)
    wait_for("the engine to drop tenant-a", lambda: world.served(node) == {"tenant-b"})
    assert node.processes["engine"].pid == engine_pid and node.processes["engine"].poll() is None


def test_a_corrupt_adapter_fails_alone(world: World) -> None:
    world.set_adapters("tenant-b", "tenant-bad")
    wait_for("tenant-bad Failed", lambda: world.states().get("tenant-bad", ("",))[0] == "Failed", timeout=60)
    bad = next(a for a in world.adep()["status"]["adapters"] if a["name"] == "tenant-bad")
    assert bad["message"].startswith("ChecksumMismatch")
    assert world.states()["tenant-b"] == ("Loaded", 1)
    assert world.condition("Degraded") == "True" and world.condition("Ready") == "False"
    assert world.served(world.nodes[0]) == {"tenant-b"}
    events = CoreV1Api(world.admin).list_namespaced_event(world.namespace).items
    assert any(e.reason == "AdapterFailed" and "tenant-bad" in e.message for e in events)
    world.set_adapters("tenant-b")
    wait_for("Ready again", lambda: world.condition("Ready") == "True", timeout=60)


def test_scaling_to_three_replicas_gives_new_pods_every_adapter(world: World) -> None:
    world.custom.patch_namespaced_custom_object(
        GROUP, VERSION, world.namespace, "adapterdeployments", "shared", {"spec": {"runtime": {"replicas": 3}}}
    )
    wait_for(
        "three engine pods",
        lambda: len(kubelet.pods_of(world.admin, world.namespace, "peft.dev/adapterdeployment=shared")) == 3,
        timeout=60,
    )
    world.start_new_pods()
    wait_for("tenant-b on 3 replicas", lambda: world.states().get("tenant-b") == ("Loaded", 3), timeout=120)
    wait_for("3 ready replicas", lambda: world.adep()["status"]["readyReplicas"] == 3)
    assert all(world.served(node) == {"tenant-b"} for node in world.nodes)


def test_an_engine_restarted_empty_gets_its_adapters_back(world: World) -> None:
    node = world.nodes[1]
    node.kill("engine")
    node.start_container("engine")
    node.wait_healthy("engine")
    assert world.served(node) == set(), "a restarted engine starts empty"
    wait_for("tenant-b back on the restarted engine", lambda: world.served(node) == {"tenant-b"}, timeout=60)
    wait_for("Ready", lambda: world.condition("Ready") == "True", timeout=60)


def test_a_finetunejob_with_deploy_lands_its_adapter(world: World) -> None:
    job = {
        "apiVersion": "peft.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "tenant-c-v1", "namespace": world.namespace},
        "spec": {
            "baseModel": {"uri": BASE_URI},
            "dataset": {"uri": "pvc://team-data/c.jsonl", "format": "instruction"},
            "method": {"type": "lora", "lora": {"r": 4}},
            "resources": {"gpus": 0},
            "output": {"uri": "pvc://team-adapters/tenant-c"},
            "deploy": {"adapterDeployment": "shared", "adapterName": "tenant-c"},
        },
    }
    world.custom.create_namespaced_custom_object(GROUP, VERSION, world.namespace, "finetunejobs", job)
    pod = wait_for(
        "the trainer pod", lambda: kubelet.pods_of(world.admin, world.namespace, "peft.dev/finetunejob=tenant-c-v1")
    )[0]
    adapter = world.adapters["tenant-c"]
    record = AdapterRecord(
        uri="pvc://team-adapters/tenant-c",
        sha256=adapter.sha256,
        size_bytes=1,
        base_model=BASE_URI,
        method="lora",
        rank=4,
    )
    final = CompletedEvent(adapter=record, progress=Progress(step=10, total_steps=10))
    kubelet.set_terminated(world.admin, pod, 0, "Completed", final.model_dump_json(by_alias=True))
    wait_for("tenant-c Loaded on 3 replicas", lambda: world.states().get("tenant-c") == ("Loaded", 3), timeout=120)
    spec_adapters = {a["name"]: a["source"] for a in world.adep()["spec"]["adapters"]}
    assert spec_adapters["tenant-c"] == {"fineTuneJobRef": {"name": "tenant-c-v1"}}
    assert all(world.served(node) == {"tenant-b", "tenant-c"} for node in world.nodes)
    assert world.nodes[0].complete("tenant-c")["model"] == "tenant-c"


def _adapterdeployment_passes(operator: OperatorProcess) -> float:
    """Reconcile passes of AdapterDeployments since the operator process started (its own metrics)."""
    for line in operator.metrics().splitlines():
        if line.startswith('peft_operator_reconciles_total{kind="AdapterDeployment"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_deleting_the_finetunejob_keeps_its_adapter_served_until_it_leaves_the_spec(world: World) -> None:
    """`kubectl delete ftj --all` to tidy up finished jobs must not take production adapters down."""
    CustomObjectsApi(world.admin).delete_namespaced_custom_object(
        GROUP, VERSION, world.namespace, "finetunejobs", "tenant-c-v1"
    )
    warning = wait_for(
        "a SourceJobDeleted Warning",
        lambda: next(
            (
                e
                for e in CoreV1Api(world.admin).list_namespaced_event(world.namespace).items
                if e.reason == "SourceJobDeleted" and e.involved_object.name == "shared"
            ),
            None,
        ),
        timeout=60,
    )
    assert warning.type == "Warning" and "tenant-c-v1 was deleted" in warning.message
    # The pass that posted the Warning also synced every engine from the recorded URI and digest.
    record = next(a for a in world.adep()["status"]["adapters"] if a["name"] == "tenant-c")
    assert record["state"] == "Loaded" and record["loadedReplicas"] == 3
    assert record["uri"] == "pvc://team-adapters/tenant-c" and record["digest"] == world.adapters["tenant-c"].sha256
    assert all(world.served(node) == {"tenant-b", "tenant-c"} for node in world.nodes)
    assert world.nodes[0].complete("tenant-c")["model"] == "tenant-c"
    # An operator restart keeps serving it: the record lives in the object's status.
    world.operator.kill()
    world.operator.start()
    wait_for("two passes after the restart", lambda: _adapterdeployment_passes(world.operator) >= 2, timeout=60)
    assert all(world.served(node) == {"tenant-b", "tenant-c"} for node in world.nodes)
    world.set_adapters("tenant-b")
    wait_for("tenant-c unloaded everywhere", lambda: all(world.served(n) == {"tenant-b"} for n in world.nodes), 60)


def test_the_admin_token_is_a_generated_secret_not_in_the_spec(world: World) -> None:
    secret = CoreV1Api(world.admin).read_namespaced_secret("shared-admin-token", world.namespace)
    token = base64.b64decode(secret.data["token"]).decode()
    assert len(token) >= 32 and token not in str(world.adep())


def test_no_client_of_the_service_can_load_or_unload_adapters_but_the_agent_can(world: World) -> None:
    """Clients land on the engine gate (the Service's targetPort); even the engine's own admin token does
    not open the load API there. The operator, through each pod's agent, still loads."""
    token = base64.b64decode(
        CoreV1Api(world.admin).read_namespaced_secret("shared-admin-token", world.namespace).data["token"]
    ).decode()
    pod_ips = sorted(node.ip for node in world.nodes)

    def every_pod_behind_the_service() -> list[str] | None:
        urls = service_urls(world.admin, world.namespace, "shared")
        return urls if sorted(url.split("//")[1].split(":")[0] for url in urls) == pod_ips else None

    urls = wait_for("the Service's endpoints on every pod", every_pod_behind_the_service)
    assert all(url.endswith(":8000") for url in urls), urls
    intruder = {"lora_name": "intruder", "lora_path": str(world.adapters["tenant-a"].path)}

    for url in urls:
        load = call_json(url + "/v1/load_lora_adapter", "POST", intruder, token, 30)
        unload = call_json(url + "/v1/unload_lora_adapter", "POST", {"lora_name": "tenant-b"}, token, 30)
        for status, body in (load, unload):
            assert (status, body["error"]["reason"]) == (403, "AdminRoute"), body
        status, body = call_json(
            url + "/v1/completions", "POST", {"model": "tenant-b", "prompt": "hi", "max_tokens": 2}
        )
        assert (status, body["model"]) == (200, "tenant-b"), body
    assert all(world.served(node) == {"tenant-b"} for node in world.nodes)

    world.set_adapters("tenant-b", "tenant-a")
    wait_for("tenant-a Loaded on 3 replicas", lambda: world.states().get("tenant-a") == ("Loaded", 3), timeout=120)
    assert all(world.served(node) == {"tenant-a", "tenant-b"} for node in world.nodes)
