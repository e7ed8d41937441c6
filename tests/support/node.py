"""A stand-in node: runs a pod's containers as local processes on their own loopback IP (127.0.0.N),
from the commands and environment in the pod spec the operator rendered, and reports pod status the way
a kubelet would. Volumes become folders under a work directory; `peft-runtime ...` runs from this checkout,
`vllm serve ...` from .venv-vllm (`make vllm`).

One loopback IP stands for both the pod's IP and its loopback (there are no network namespaces here), so
what a pod binds to 127.0.0.1 is reachable from other "pods" too: the tests reach engines the way clients
do, through the Service's port on the pod IP."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes.client import ApiClient, CoreV1Api

from tests.support import kubelet
from tests.support.vllm_server import SERVE_SCRIPT, VLLM_PYTHON, VLLM_TEST_ENV


def _resolve_env(client: ApiClient, namespace: str, container: Any) -> dict[str, str]:
    env: dict[str, str] = {}
    core = CoreV1Api(client)
    for source in container.env_from or []:
        secret = core.read_namespaced_secret(source.secret_ref.name, namespace)
        env.update({(source.prefix or "") + k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()})
    for var in container.env or []:
        if var.value is not None:
            env[var.name] = var.value
        elif var.value_from is not None and var.value_from.secret_key_ref is not None:
            ref = var.value_from.secret_key_ref
            env[var.name] = base64.b64decode(core.read_namespaced_secret(ref.name, namespace).data[ref.key]).decode()
    return env


@dataclass
class NodePod:
    """One pod's containers running locally on `ip`; `paths` maps in-pod mount paths to local folders."""

    client: ApiClient
    pod: Any
    ip: str
    paths: dict[str, Path]
    log_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def health(self) -> dict[str, int]:
        """Container -> the port its /health answers on: its readiness probe's, else its --port flag (the
        engine, which listens on loopback behind the gate and has no probe of its own)."""
        ports = {}
        for container in self.pod.spec.containers:
            probe = container.readiness_probe
            if probe is not None and probe.http_get is not None:
                ports[container.name] = int(probe.http_get.port)
            else:
                argv = list(container.command) + list(container.args or [])
                ports[container.name] = int(next(a for a in argv if a.startswith("--port=")).split("=", 1)[1])
        return ports

    def _local(self, value: str) -> str:
        """An in-pod path (or flag=path) as the local folder that stands in for its volume."""
        flag, sep, path = value.rpartition("=") if value.startswith("--") else ("", "", value)
        for inside, outside in self.paths.items():
            if path == inside or path.startswith(inside + "/"):
                return f"{flag}{sep}{outside}{path[len(inside) :]}"
        return value

    def _command(self, container: Any) -> list[str]:
        argv = list(container.command) + list(container.args or [])
        rewritten = [self._local(arg).replace("127.0.0.1", self.ip) for arg in argv]
        if rewritten[:2] == ["vllm", "serve"]:
            return [str(VLLM_PYTHON), str(SERVE_SCRIPT), *rewritten[2:]]
        assert rewritten[0] == "peft-runtime", rewritten
        return [sys.executable, "-m", "peft_runtime.cli", *rewritten[1:], f"--host={self.ip}"]

    def start_container(self, name: str) -> None:
        container = next(c for c in self.pod.spec.containers if c.name == name)
        env = {
            **os.environ,
            **_resolve_env(self.client, self.pod.metadata.namespace, container),
            "HF_HUB_OFFLINE": "1",
            "HOME": str(self.log_dir),
        }
        if container.command[0] == "vllm":
            env.update(VLLM_TEST_ENV)
        log = (self.log_dir / f"{self.pod.metadata.name}-{name}.log").open("ab")
        # Its own process group, so that killing a container takes its children (vLLM's engine core) too.
        self.processes[name] = subprocess.Popen(
            self._command(container), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_healthy(self, name: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.processes[name].poll() is not None:
                raise RuntimeError(f"{name} on {self.ip} exited: {self.log(name)[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://{self.ip}:{self.health[name]}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"{name} on {self.ip} not healthy after {timeout}s: {self.log(name)[-2000:]}")

    def start(self) -> NodePod:
        for name in self.health:
            self.start_container(name)
        for name in self.health:
            self.wait_healthy(name)
        self.report_running()
        return self

    def report_running(self) -> None:
        now = kubelet.now()
        statuses = [
            {
                "name": name,
                "image": "registry.test/peft-runtime:test",
                "imageID": "",
                "ready": True,
                "restartCount": 0,
                "started": True,
                "state": {"running": {"startedAt": now}},
            }
            for name in self.health
        ]
        CoreV1Api(self.client).patch_namespaced_pod_status(
            self.pod.metadata.name,
            self.pod.metadata.namespace,
            {
                "status": {
                    "phase": "Running",
                    "podIP": self.ip,
                    "podIPs": [{"ip": self.ip}],
                    "startTime": now,
                    "containerStatuses": statuses,
                }
            },
            _content_type="application/strategic-merge-patch+json",
        )

    def kill(self, name: str) -> None:
        process = self.processes.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        self.processes.clear()

    def log(self, name: str) -> str:
        path = self.log_dir / f"{self.pod.metadata.name}-{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def get(self, path: str) -> Any:
        import json

        with urllib.request.urlopen(f"http://{self.ip}:8000{path}", timeout=30) as response:
            return json.loads(response.read())

    def complete(self, model: str, prompt: str = "hello", max_tokens: int = 4) -> dict[str, Any]:
        import json

        body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens}).encode()
        request = urllib.request.Request(
            f"http://{self.ip}:8000/v1/completions", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]


def service_urls(client: ApiClient, namespace: str, service: str) -> list[str]:
    """Where a client of the Service lands, resolved as kube-proxy would: the pods its selector matches, at
    the container port its targetPort names. (Read from the objects themselves: the EndpointSlice
    controller refuses loopback pod IPs and pods bound to no Node, which is what this node has.)"""
    core = CoreV1Api(client)
    spec = core.read_namespaced_service(service, namespace).spec
    selector = ",".join(f"{key}={value}" for key, value in spec.selector.items())
    target = spec.ports[0].target_port
    urls = []
    for pod in core.list_namespaced_pod(namespace, label_selector=selector).items:
        if not pod.status.pod_ip or pod.metadata.deletion_timestamp:
            continue
        ports = [p for c in pod.spec.containers for p in c.ports or [] if target in (p.name, p.container_port)]
        urls += [f"http://{pod.status.pod_ip}:{port.container_port}" for port in ports]
    return sorted(urls)
