"""What the end-to-end tests do on the real node: install the operator from the chart, make a tenant's
claims (hostPath volumes the test can fill and read), read custom objects, call a Service."""

from __future__ import annotations

import json
import os
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.chart.rendering import CHART_DIR, NAMESPACE, RELEASE, manifest_text
from tests.support.kubelet import wait_for
from tests.support.real_node import RealNode

GROUP, VERSION = "peft.dev", "v1alpha1"
# Images are imported into the node, never pulled.
CHART_VALUES = {"replicas": 1, "image": {"pullPolicy": "Never"}, "runtimeImage": {"pullPolicy": "Never"}}
DEPLOYMENT = RELEASE  # the release's full name: "peft-operator" already names the chart


def install_operator(node: RealNode) -> dict[str, Any]:
    """CRDs, then every rendered manifest, applied server-side as `helm install` does; waits for the rollout."""
    import helm_python

    chart = helm_python.Chart.load(CHART_DIR)
    try:
        node.kubectl("apply", "--server-side", "-f", "-", input="\n---\n".join(c["data"] for c in chart.crds))
        names = [yaml.safe_load(c["data"])["metadata"]["name"] for c in chart.crds]
        node.kubectl("wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}" for n in names))
        node.kubectl("create", "namespace", NAMESPACE)
        node.kubectl(
            "apply", "--server-side", "--field-manager=helm", "-f", "-", input=manifest_text(chart, CHART_VALUES)
        )
    finally:
        chart.close()
    rollout(node)
    return get(node, "deployment", DEPLOYMENT, NAMESPACE)


def rollout(node: RealNode, timeout: int = 300) -> None:
    node.kubectl(
        "rollout", "status", f"deployment/{DEPLOYMENT}", "-n", NAMESPACE, f"--timeout={timeout}s", timeout=timeout + 10
    )


def get(node: RealNode, kind: str, name: str, namespace: str) -> dict[str, Any]:
    return dict(json.loads(node.kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout))


def items(node: RealNode, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
    return list(json.loads(node.kubectl("get", kind, "-n", namespace, "-l", selector, "-o", "json").stdout)["items"])


def create_object(node: RealNode, body: dict[str, Any]) -> None:
    node.kubectl("create", "-f", "-", input=json.dumps(body))


TINY_LORA = {"type": "lora", "lora": {"r": 4, "alpha": 8, "targetModules": ["q_proj", "v_proj"]}}


def create_finetunejob(node: RealNode, namespace: str, name: str, **spec: Any) -> None:
    """A FineTuneJob on the tenant's tiny model and data (LoRA r 4 unless `spec` says otherwise), writing to
    pvc://team-adapters/<name>."""
    defaults = {
        "baseModel": {"uri": "pvc://models/tiny"},
        "dataset": {"uri": "pvc://team-data/train.jsonl", "format": "instruction"},
        "method": TINY_LORA,
        "output": {"uri": f"pvc://team-adapters/{name}"},
    }
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": namespace},
    }
    create_object(node, {**body, "spec": defaults | spec})


def wait_phase(node: RealNode, kind: str, name: str, namespace: str, phase: str, timeout: float) -> dict[str, Any]:
    """Wait for `status.phase`; a Failed object ends the wait at once with its status."""

    def probe() -> dict[str, Any] | None:
        obj = get(node, kind, name, namespace)
        status = obj.get("status") or {}
        if status.get("phase") == "Failed" != phase:
            raise AssertionError(f"{kind} {name} Failed: {json.dumps(status, indent=1)[-3000:]}")
        return obj if status.get("phase") == phase else None

    return wait_for(f"{kind} {name} to be {phase}", probe, timeout=timeout, interval=2)


def http_in_node(node: RealNode, method: str, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """An HTTP call from the node (its network namespace), e.g. to a Service's cluster IP."""
    argv = ["curl", "--silent", "--show-error", "--fail-with-body", "--max-time", "120", "-X", method, url]
    if body is not None:
        argv += ["-H", "Content-Type: application/json", "--data", json.dumps(body)]
    proc = node.in_node(*argv, check=False, timeout=150)
    if proc.returncode != 0:
        raise AssertionError(
            f"{shlex.join(argv)} exited {proc.returncode}: {proc.stdout[-2000:]} {proc.stderr[-2000:]}"
        )
    return dict(json.loads(proc.stdout))


def wait_for_service(node: RealNode, service_ip: str, port: int, path: str = "/health", timeout: float = 120) -> None:
    """Wait until the Service answers: kube-proxy programs its rules a moment after the endpoints turn ready."""

    def answers() -> bool:
        url = f"http://{service_ip}:{port}{path}"
        return node.in_node("curl", "--silent", "--fail", "--max-time", "5", url, check=False).returncode == 0

    wait_for(f"the Service {service_ip}:{port} to answer {path}", answers, timeout=timeout, interval=1)


@dataclass
class Tenant:
    """A namespace whose claims (`models`, `team-data`, `team-adapters`) are folders on this machine."""

    node: RealNode
    namespace: str
    volumes: Path
    claims: tuple[str, ...] = ("models", "team-data", "team-adapters")

    @classmethod
    def create(cls, node: RealNode, namespace: str) -> Tenant:
        tenant = cls(node, namespace, node.node_dir / "volumes" / namespace)
        shutil.rmtree(tenant.volumes, ignore_errors=True)  # an earlier session's outputs and checkpoints
        node.kubectl("create", "namespace", namespace)
        for claim in tenant.claims:
            tenant.claim_dir(claim).mkdir(parents=True, exist_ok=True)
            tenant._bind(claim)
        return tenant

    def claim_dir(self, claim: str) -> Path:
        return self.volumes / claim

    def _bind(self, claim: str) -> None:
        volume = f"{self.namespace}-{claim}"
        spec = {"storageClassName": "node-local", "accessModes": ["ReadWriteOnce"]}
        create_object(
            self.node,
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": volume},
                "spec": {
                    **spec,
                    "capacity": {"storage": "1Gi"},
                    "hostPath": {"path": str(self.claim_dir(claim)), "type": "Directory"},
                    "claimRef": {"namespace": self.namespace, "name": claim},
                },
            },
        )
        claim_body = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim}}
        claim_body["spec"] = {**spec, "volumeName": volume, "resources": {"requests": {"storage": "1Gi"}}}
        create_object(self.node, {**claim_body, "metadata": {"name": claim, "namespace": self.namespace}})

    def open_to_pods(self) -> None:
        """hostPath volumes ignore fsGroup: let the pods' non-root user write what the test put there."""
        for root, _dirs, files in os.walk(self.volumes):
            Path(root).chmod(0o777)
            for name in files:
                (Path(root) / name).chmod(0o666)
