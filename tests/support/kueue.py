"""Real Kueue (sigs.k8s.io/kueue v0.17.0, built by tests/kueue/build.sh) against the test control plane.

Kueue always starts its webhook server and, with its internal cert management, waits at start-up for
three things a cluster install provides and a bare apiserver does not:
- the Secret kueue-system/kueue-webhook-server-cert (its cert rotator fills it, it never creates it);
- tls.crt/tls.key already in its certDir (in a pod, the kubelet mounts the Secret there);
- conversion webhooks on its CRDs to inject its CA into (the kustomize patches in the module point them at a
  Service; here they point at the webhook server on loopback, with a CA made here).
The tests use the storage version (v1beta2), so no conversion is ever requested. Jobs reach Kueue created
suspended with the queue-name label, so its admission webhooks are not needed either.

Delete the Jobs before stopping Kueue: its Workload finalizer would block their foreground deletion."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from base64 import b64encode
from pathlib import Path
from typing import Any

import yaml

from tests.support.controlplane import REPO_ROOT, ControlPlane, _issue, _make_ca, find_go, free_port

BUILD_SCRIPT = REPO_ROOT / "tests" / "kueue" / "build.sh"
KUEUE_DIR = REPO_ROOT / ".kueue"
NAMESPACE = "kueue-system"
WEBHOOK_SERVICE = "kueue-webhook-service"
WEBHOOK_SECRET = "kueue-webhook-server-cert"
# The CRDs whose kustomize patches enable a conversion webhook (config/components/crd/patches/webhook_in_*).
CONVERTED = ("clusterqueues", "cohorts", "localqueues", "multikueueclusters", "resourceflavors", "workloads")


class KueueMissing(RuntimeError):
    """No Go toolchain to build Kueue, and no Kueue built earlier."""


def ensure_kueue() -> Path:
    """The Kueue folder (bin/kueue, crds/), built or found up to date by tests/kueue/build.sh."""
    go = find_go()
    if go is not None:
        env = dict(os.environ, GO=go, KUEUE_DIR=str(KUEUE_DIR))
        proc = subprocess.run(["bash", str(BUILD_SCRIPT)], env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"`make kueue` failed:\n{proc.stdout}{proc.stderr}")
    if not (KUEUE_DIR / "bin" / "kueue").exists():
        raise KueueMissing("Kueue is not built and there is no Go toolchain: run `make kueue`")
    return KUEUE_DIR


class Kueue:
    def __init__(self, controlplane: ControlPlane, kueue_dir: Path, workdir: Path) -> None:
        self.cp, self.dir, self.workdir = controlplane, kueue_dir, workdir
        self.log = workdir / "kueue.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> Kueue:
        webhook_port, health_port = free_port(), free_port()
        ca = _make_ca("kueue-test-ca")
        dns = [f"{WEBHOOK_SERVICE}.{NAMESPACE}.svc", f"{WEBHOOK_SERVICE}.{NAMESPACE}.svc.cluster.local"]
        serving = _issue(ca, dns[0], server=True, dns=dns, ips=["127.0.0.1"])
        cert_dir = self.workdir / "certs"
        cert_dir.mkdir(parents=True, exist_ok=True)
        (cert_dir / "tls.crt").write_bytes(serving.cert_pem)
        (cert_dir / "tls.key").write_bytes(serving.key_pem)

        self._apply_crds(ca.cert_pem, webhook_port)
        self.cp.ensure_namespace(NAMESPACE)
        # Empty: the rotator fills it with a CA and serving cert of its own (it wants an RSA PKCS#1 CA key)
        # and injects that CA into the CRDs. The webhook server keeps serving the files above, which is
        # harmless here: the tests never ask for a conversion or an admission review.
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": WEBHOOK_SECRET, "namespace": NAMESPACE},
        }
        self.cp.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump(secret))

        config = {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2",
            "kind": "Configuration",
            "namespace": NAMESPACE,
            "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
            "metrics": {"bindAddress": "0"},  # off: nothing scrapes it here
            "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {
                "enable": True,
                "webhookServiceName": WEBHOOK_SERVICE,
                "webhookSecretName": WEBHOOK_SECRET,
            },
            "integrations": {"frameworks": ["batch/job"]},
        }
        config_file = self.workdir / "kueue-config.yaml"
        config_file.write_text(yaml.safe_dump(config))
        env = dict(os.environ, KUBECONFIG=str(self.cp.kubeconfig_path))
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                # The on-demand visibility API server needs in-cluster delegated authentication: off.
                [
                    str(self.dir / "bin" / "kueue"),
                    f"--config={config_file}",
                    "--feature-gates=VisibilityOnDemand=false",
                    "--zap-log-level=2",
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_ready(f"http://127.0.0.1:{health_port}/readyz", timeout)
        return self

    def _apply_crds(self, ca_pem: bytes, webhook_port: int) -> None:
        documents = []
        for path in sorted((self.dir / "crds").glob("*.yaml")):
            crd = yaml.safe_load(path.read_text())
            if crd["spec"]["names"]["plural"] in CONVERTED:
                crd["spec"]["conversion"] = {
                    "strategy": "Webhook",
                    "webhook": {
                        "clientConfig": {
                            "url": f"https://127.0.0.1:{webhook_port}/convert",
                            "caBundle": b64encode(ca_pem).decode(),
                        },
                        "conversionReviewVersions": ["v1"],
                    },
                }
            documents.append(crd)
        # Server-side: the CRDs are too large for client-side apply's last-applied annotation.
        manifest = yaml.safe_dump_all(documents)
        self.cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=manifest)
        names = [f"crd/{d['metadata']['name']}" for d in documents]
        self.cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)

    def _wait_ready(self, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"kueue exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError as error:
                last = repr(error)
            time.sleep(0.2)
        raise RuntimeError(f"kueue not ready at {url} within {timeout}s ({last}):\n{self.log_tail()}")

    def apply(self, *objects: dict[str, Any]) -> None:
        self.cp.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(list(objects)))

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
