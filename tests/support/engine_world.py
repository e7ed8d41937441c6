"""One AdapterDeployment against the real control plane and operator, its engine pods run by the test node
(tests/support/node.py) on their own loopback IPs, and its adapters in a folder that stands for the
`team-adapters` claim. The tests play the node; the operator does the rest."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi

from tests.support import kubelet
from tests.support.node import NodePod
from tests.support.operator_process import OperatorProcess

GROUP, VERSION, PLURAL = "peft.dev", "v1alpha1", "adapterdeployments"


@dataclass
class EngineWorld:
    """`root / "pvc"` is where pvc:// claims live; `adapters` maps a folder under pvc://team-adapters to what
    was made there (anything with a `sha256`); pods get IPs `{subnet}.2`, `{subnet}.3`, ..."""

    admin: ApiClient
    namespace: str
    root: Path
    adapters: dict[str, Any]
    operator: OperatorProcess
    name: str = "shared"
    subnet: str = "127.0.0"
    nodes: list[NodePod] = field(default_factory=list)

    @property
    def custom(self) -> CustomObjectsApi:
        return CustomObjectsApi(self.admin)

    @property
    def selector(self) -> str:
        return f"peft.dev/adapterdeployment={self.name}"

    def adep(self) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name)  # type: ignore[no-any-return]

    def patch_spec(self, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name, {"spec": spec})

    def entry(self, name: str, folder: str | None = None) -> dict[str, Any]:
        """Adapter `name` served from the folder `folder` (default: its own name)."""
        folder = folder or name
        return {
            "name": name,
            "source": {"uri": f"pvc://team-adapters/{folder}", "sha256": self.adapters[folder].sha256},
        }

    def set_adapters(self, *names: str) -> None:
        self.patch_spec({"adapters": [self.entry(n) for n in names]})

    def status(self) -> dict[str, Any]:
        return self.adep().get("status") or {}

    def states(self) -> dict[str, tuple[str, int]]:
        return {a["name"]: (a["state"], a.get("loadedReplicas", 0)) for a in self.status().get("adapters", [])}

    def adapter_status(self, name: str) -> dict[str, Any]:
        return next(a for a in self.status()["adapters"] if a["name"] == name)

    def condition(self, type_: str) -> str | None:
        return next((c["status"] for c in self.status().get("conditions", []) if c["type"] == type_), None)

    def events(self, reason: str) -> list[Any]:
        return [e for e in CoreV1Api(self.admin).list_namespaced_event(self.namespace).items if e.reason == reason]

    def start_new_pods(self) -> None:
        """Run every engine pod the Deployment has that this node does not run yet (its containers, from
        the pod spec the operator rendered)."""
        known = {n.pod.metadata.name for n in self.nodes}
        for pod in kubelet.pods_of(self.admin, self.namespace, self.selector):
            if pod.metadata.name in known or pod.metadata.deletion_timestamp:
                continue
            ip = f"{self.subnet}.{len(self.nodes) + 2}"
            work = self.root / f"node-{ip}"
            paths = {"/mnt/pvc": self.root / "pvc", "/adapters": work / "adapters", "/tmp": work / "tmp"}
            for folder in paths.values():
                folder.mkdir(parents=True, exist_ok=True)
            self.nodes.append(NodePod(self.admin, pod, ip, paths, work).start())

    def served(self, node: NodePod) -> set[str]:
        """The adapters the pod's engine answers for (through the Service's port)."""
        return {m["id"] for m in node.get("/v1/models")["data"] if m.get("parent")}

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
