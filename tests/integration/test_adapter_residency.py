"""Integration: many registered adapters, few in memory, through the operator. A real kube-apiserver and the
real operator; the engine pod (real built-in engine, agent and gate processes) run by the test node.

120 adapters are registered with `limits.maxResident: 3` and one pinned; requests through the engine Service
for adapters that are not resident are answered by their own weights (texts equal peft's single-adapter
reference) while the engine swaps them in and out; the pinned one stays in memory, and status says where
adapters are resident."""

from __future__ import annotations

import random
import shutil
from collections.abc import Iterator

import pytest

from tests.support import kubelet
from tests.support.adapters import make_lora_adapter, reference_generate
from tests.support.controlplane import ControlPlane
from tests.support.engine_world import EngineWorld
from tests.support.http import call_json
from tests.support.kubelet import wait_for
from tests.support.node import service_urls
from tests.support.operator_process import OperatorProcess, operator_kubeconfig
from tests.support.tiny_model import build_tiny_llama

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
BASE_URI = "pvc://models/tiny"
DISTINCT = 6  # adapters with their own weights: the ones whose answers are checked
REGISTERED = 120  # the rest are copies of the first under other names: registered like any other
MAX_RESIDENT = 3
PROMPT = "The capital of france is"
MAX_TOKENS = 6


@pytest.fixture(scope="module")
def world(
    controller_manager: ControlPlane, crds_installed: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EngineWorld]:
    root = tmp_path_factory.mktemp("residency")
    model = build_tiny_llama(root / "pvc" / "models" / "tiny")
    folder = root / "pvc" / "team-adapters"
    adapters = {
        f"tenant-{i}": make_lora_adapter(model, folder / f"tenant-{i}", seed=200 + i, uri=BASE_URI)
        for i in range(DISTINCT)
    }
    for i in range(DISTINCT, REGISTERED):
        shutil.copytree(adapters["tenant-0"].path, folder / f"tenant-{i}")
        adapters[f"tenant-{i}"] = adapters["tenant-0"]
    namespace = "residency-it"
    controller_manager.ensure_namespace(namespace)
    operator = OperatorProcess(
        operator_kubeconfig(controller_manager, role="peft-operator-residency"), root / "operator.log"
    ).start()
    admin = controller_manager.api_client()
    world = EngineWorld(admin, namespace, root, adapters, operator, subnet="127.0.3")
    entries = [world.entry(name) for name in adapters]
    entries[1]["pinned"] = True
    body = {
        "apiVersion": "peft.dev/v1alpha1",
        "kind": "AdapterDeployment",
        "metadata": {"name": "shared", "namespace": namespace},
        "spec": {
            "baseModel": {"uri": BASE_URI},
            "runtime": {"engine": "builtin", "replicas": 1, "resources": {"gpus": 0}},
            "limits": {"maxAdapters": REGISTERED + 8, "maxResident": MAX_RESIDENT, "maxRank": 16},
            "adapters": entries,
        },
    }
    world.custom.create_namespaced_custom_object("peft.dev", "v1alpha1", namespace, "adapterdeployments", body)
    wait_for("the engine pod", lambda: kubelet.pods_of(admin, namespace, world.selector), timeout=60)
    world.start_new_pods()
    yield world
    world.stop()
    operator.stop()
    admin.close()


@pytest.fixture(scope="module")
def service_url(world: EngineWorld) -> str:
    def all_loaded() -> bool:
        states = world.states()
        return len(states) == REGISTERED and all(state == ("Loaded", 1) for state in states.values())

    wait_for(f"{REGISTERED} adapters Loaded", all_loaded, timeout=600, interval=2)
    [url] = wait_for("the Service's endpoint", lambda: service_urls(world.admin, world.namespace, "shared") or None)
    return url


def _resident(url: str) -> set[str]:
    status, body = call_json(url + "/v1/models", "GET")
    assert status == 200, body
    return {card["id"] for card in body["data"] if card.get("resident")}


def test_every_registered_adapter_is_loaded_but_only_max_resident_are_in_memory(
    world: EngineWorld, service_url: str
) -> None:
    status, body = call_json(service_url + "/v1/models", "GET")
    assert status == 200
    assert len([card for card in body["data"] if card.get("parent")]) == REGISTERED
    resident = _resident(service_url)
    assert len(resident) <= MAX_RESIDENT and "tenant-1" in resident


def test_requests_for_evicted_adapters_are_answered_by_their_own_weights(world: EngineWorld, service_url: str) -> None:
    model = world.root / "pvc" / "models" / "tiny"
    expected = {
        f"tenant-{i}": reference_generate(model, world.adapters[f"tenant-{i}"].path, [PROMPT], MAX_TOKENS)[0]
        for i in range(DISTINCT)
    }
    expected |= {f"tenant-{i}": expected["tenant-0"] for i in range(DISTINCT, REGISTERED, 17)}
    order = list(expected) * 2
    random.Random(3).shuffle(order)
    for name in order:
        status, body = call_json(
            service_url + "/v1/completions", "POST", {"model": name, "prompt": PROMPT, "max_tokens": MAX_TOKENS}
        )
        assert status == 200, f"{name}: {body}"
        assert body["choices"][0]["text"] == expected[name], f"{name} was answered with other weights"
        resident = _resident(service_url)
        assert len(resident) <= MAX_RESIDENT and "tenant-1" in resident, resident


def test_status_says_where_the_pinned_adapter_is_resident(world: EngineWorld, service_url: str) -> None:
    [pod] = [node.pod.metadata.name for node in world.nodes]
    wait_for(
        "the pinned adapter resident on the pod in status (the resync asks the agent every 10 s)",
        lambda: world.adapter_status("tenant-1").get("residentReplicas") == [pod],
        timeout=120,
        interval=1,
    )
    assert world.adapter_status("tenant-1")["state"] == "Loaded"
