"""`targetRef` on REAL vLLM: an engine Deployment its owner applies server-side as Argo CD does
(`argocd-controller`), with vLLM's LoRA flags in the owner's own command and the engine gate in front
(vLLM on loopback :8080, `peft-runtime gate` on the Service's port). The operator adds only its fields:
the agent, the shared volume and `VLLM_ALLOW_RUNTIME_LORA_UPDATING` on the vLLM container (nothing else
sets it here, so vLLM has load routes only if the operator's apply reached it). An adapter our trainer
made is hot-loaded and answers through the gate; the owner's re-applies change nothing and leave vLLM
running; clients of the gate cannot load."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient, AppsV1Api, CustomObjectsApi

from peft_operator.api.manifest import MANIFEST_FILE_NAME, AdapterManifest
from tests.support import kubelet
from tests.support.adapters import rewrite_manifest
from tests.support.controlplane import ControlPlane
from tests.support.http import call_json
from tests.support.kubelet import wait_for
from tests.support.node import NodePod
from tests.support.operator_process import OperatorProcess
from tests.vllm.conftest import FACTS, PROMPT, Trained

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1800)]
GROUP, VERSION = "peft.dev", "v1alpha1"
NAMESPACE, NAME = "vllm-target", "vllm-owned"
BASE_URI = "pvc://models/smollm2"
LOAD_S = 600  # vLLM's start on a busy 2-core machine
OWNER_ARGS = [
    "/mnt/pvc/models/smollm2",
    "--host=127.0.0.1",
    "--port=8080",
    "--served-model-name=smollm2",
    "--dtype=bfloat16",
    "--max-model-len=512",
    "--enable-lora",
    "--max-loras=4",
    "--max-cpu-loras=4",
    "--max-lora-rank=16",
]


def owners_manifest() -> dict[str, Any]:
    vllm = {
        "name": "vllm",
        "image": "vllm/vllm-openai:v0.11.0",
        "command": ["vllm", "serve"],
        "args": OWNER_ARGS,
        "volumeMounts": [{"name": "models", "mountPath": "/mnt/pvc/models", "readOnly": True}],
    }
    gate = {
        "name": "gate",
        "image": "registry.test/peft-runtime:test",
        "command": ["peft-runtime", "gate", "--engine-url=http://127.0.0.1:8080", "--port=8000"],
        "ports": [{"name": "http", "containerPort": 8000}],
        "readinessProbe": {"httpGet": {"path": "/health", "port": 8000}, "periodSeconds": 5},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": NAME}},
            "template": {
                "metadata": {"labels": {"app": NAME}},
                "spec": {
                    "containers": [vllm, gate],
                    "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}}],
                },
            },
        },
    }


class World:
    def __init__(self, cp: ControlPlane, operator: OperatorProcess, root: Path, adapter: Trained) -> None:
        self.cp, self.operator, self.root, self.adapter = cp, operator, root, adapter
        self.admin: ApiClient = cp.api_client()
        self.nodes: list[NodePod] = []

    def owner_applies(self) -> None:
        self.cp.kubectl(
            "apply",
            "--server-side",
            "--field-manager=argocd-controller",
            "--force-conflicts",
            "-f",
            "-",
            input=yaml.safe_dump(owners_manifest()),
        )

    def deployment(self) -> dict[str, Any]:
        return self.admin.sanitize_for_serialization(AppsV1Api(self.admin).read_namespaced_deployment(NAME, NAMESPACE))  # type: ignore[no-any-return]

    def status(self) -> dict[str, Any]:
        adep = CustomObjectsApi(self.admin).get_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, "adapterdeployments", NAME
        )
        return adep.get("status") or {}  # type: ignore[no-any-return]

    def metric(self, prefix: str) -> float:
        lines = [line for line in self.operator.metrics().splitlines() if line.startswith(prefix)]
        return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0

    def applies(self) -> float:
        return self.metric(f'peft_operator_target_applies_total{{name="{NAME}",namespace="{NAMESPACE}"}}')

    def passes(self) -> float:
        return self.metric('peft_operator_reconciles_total{kind="AdapterDeployment"}')

    def wait_passes(self, count: int) -> None:
        """`count` more passes and a resync period (10 s): the operator has looked at the Deployment since."""
        target, not_before = self.passes() + count, time.monotonic() + 11
        wait_for("more passes", lambda: self.passes() >= target and time.monotonic() >= not_before, timeout=90)


@pytest.fixture(scope="module")
def world(
    controller_manager: ControlPlane,
    crds_installed: list[str],
    operator: OperatorProcess,
    trained: dict[str, Trained],
    smollm2_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    root = tmp_path_factory.mktemp("vllm-target")
    (root / "pvc" / "models").mkdir(parents=True)
    (root / "pvc" / "models" / "smollm2").symlink_to(smollm2_dir)
    folder = root / "pvc" / "team-adapters" / "tenant-a"
    shutil.copytree(trained["v1"].path, folder)
    # The manifest names the base model as the AdapterDeployment does (the same files, through the claim).
    manifest = AdapterManifest.model_validate_json((folder / MANIFEST_FILE_NAME).read_text())
    digest = rewrite_manifest(folder, base_model=manifest.base_model.model_copy(update={"uri": BASE_URI}))
    controller_manager.ensure_namespace(NAMESPACE)
    world = World(controller_manager, operator, root, Trained(folder, digest))
    world.owner_applies()
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AdapterDeployment",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {
            "baseModel": {"uri": BASE_URI},
            "targetRef": {"name": NAME, "container": "vllm", "port": 8080},
            "limits": {"maxAdapters": 4, "maxRank": 16},
            "adapters": [{"name": "tenant-a", "source": {"uri": "pvc://team-adapters/tenant-a", "sha256": digest}}],
        },
    }
    CustomObjectsApi(world.admin).create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "adapterdeployments", body)
    pod = wait_for(
        "the equipped pod", lambda: kubelet.pods_of(world.admin, NAMESPACE, f"peft.dev/adapterdeployment={NAME}"), 60
    )[0]
    ip, work = "127.0.2.2", root / "node"
    paths = {"/mnt/pvc": root / "pvc", "/adapters": work / "adapters", "/tmp": work / "tmp"}
    for path in paths.values():
        path.mkdir(parents=True, exist_ok=True)
    try:
        world.nodes.append(NodePod(world.admin, pod, ip, paths, work).start())
        yield world
    finally:
        for node in world.nodes:
            node.stop()
        world.admin.close()


def answer(url: str, model: str) -> str:
    body = {"model": model, "prompt": PROMPT.format(q=next(iter(FACTS))), "max_tokens": 12, "temperature": 0}
    status, reply = call_json(url + "/v1/completions", "POST", body, None, 120)
    assert status == 200 and reply["model"] == model, reply
    return str(reply["choices"][0]["text"])


def test_vllm_owned_by_gitops_hot_loads_through_the_operators_fields_only(world: World) -> None:
    wait_for(
        "tenant-a Loaded",
        lambda: {a["name"]: a["state"] for a in world.status().get("adapters", [])} == {"tenant-a": "Loaded"},
        LOAD_S,
    )
    node = world.nodes[0]
    url = f"http://{node.ip}:8000"  # the gate: the Service's port
    assert answer(url, "tenant-a") != answer(url, "smollm2")
    conditions = {c["type"]: c for c in world.status()["conditions"]}
    assert conditions["EngineConfigured"]["status"] == "True", conditions["EngineConfigured"]
    vllm = next(c for c in world.deployment()["spec"]["template"]["spec"]["containers"] if c["name"] == "vllm")
    assert vllm["args"] == OWNER_ARGS, "the owner's args, as the owner wrote them"
    assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in vllm["env"]

    status, reply = call_json(
        url + "/v1/load_lora_adapter", "POST", {"lora_name": "intruder", "lora_path": str(world.adapter.path)}
    )
    assert (status, reply["error"]["reason"]) == (403, "AdminRoute"), reply

    generation, applies, pid = world.deployment()["metadata"]["generation"], world.applies(), node.processes["vllm"].pid
    for _ in range(3):
        world.owner_applies()
        world.wait_passes(2)
    bumps = world.deployment()["metadata"]["generation"] - generation
    print(
        f"\nreal vLLM, owner re-applied 3x: {bumps} generation bumps, {world.applies() - applies:.0f} operator applies"
    )
    assert (bumps, world.applies() - applies) == (0, 0)
    assert node.processes["vllm"].pid == pid and node.processes["vllm"].poll() is None
    assert answer(url, "tenant-a") != answer(url, "smollm2")
