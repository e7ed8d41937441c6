"""The operator as a real process (`peft-operator run`) with the credentials of the chart's RBAC rules."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.support.controlplane import REPO_ROOT, ControlPlane, free_port

RULE_FILES = [
    REPO_ROOT / "charts" / "peft-operator" / "files" / "operator-rules.yaml",
    REPO_ROOT / "charts" / "peft-operator" / "files" / "cluster-rules.yaml",
]


def chart_rules() -> list[dict[str, Any]]:
    """The RBAC rules the Helm chart grants the operator (one source for chart and tests)."""
    rules: list[dict[str, Any]] = []
    for path in RULE_FILES:
        rules.extend(yaml.safe_load(path.read_text()))
    return rules


def operator_kubeconfig(
    cp: ControlPlane, rules: list[dict[str, Any]] | None = None, role: str = "peft-operator"
) -> Path:
    """Bind a ClusterRole with `rules` to a fresh operator identity; return its kubeconfig."""
    rbac = [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": role},
            "rules": chart_rules() if rules is None else rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": role},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": f"user:{role}"}],
        },
    ]
    cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=yaml.safe_dump_all(rbac))
    return cp.mint_user_kubeconfig(f"user:{role}")


class OperatorProcess:
    """Start, kill -9 and restart `peft-operator run`; the log file survives restarts."""

    def __init__(
        self,
        kubeconfig: Path,
        log_path: Path,
        progress_key: str = "test-progress-key",
        run_as: int | None = None,
        **env: str,
    ):
        """`run_as`: the uid (and gid) the process sees itself as, with no USER, LOGNAME or HOME, as in the
        operator image. A user namespace maps it onto our own uid, so files stay readable as they are."""
        self.kubeconfig = kubeconfig
        self.run_as = run_as
        self.log_path = log_path
        self.progress_key = progress_key
        self.progress_port = free_port()
        self.metrics_port = free_port()
        self.extra_env = env
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def progress_url(self) -> str:
        return f"http://127.0.0.1:{self.progress_port}"

    def start(self) -> OperatorProcess:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PEFT_PROGRESS_URL": self.progress_url,
            "PEFT_PROGRESS_KEY": self.progress_key,
            "PEFT_PROGRESS_PORT": str(self.progress_port),
            "PEFT_METRICS_PORT": str(self.metrics_port),
            "PEFT_RUNTIME_IMAGE": "registry.test/peft-runtime:test",
            # The simulated kubelet runs no pod by itself, so a preflight Job would hold every GPU job at
            # Pending; the tests of the preflight step turn it on (PEFT_PREFLIGHT=gpu, the product default).
            "PEFT_PREFLIGHT": "off",
            **self.extra_env,
        }
        env.pop("KUBERNETES_SERVICE_HOST", None)
        as_user: list[str] = []
        if self.run_as is not None:
            for variable in ("USER", "LOGNAME", "HOME"):
                env.pop(variable, None)
            as_user = ["unshare", "--user", f"--map-user={self.run_as}", f"--map-group={self.run_as}"]
        log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [*as_user, sys.executable, "-m", "peft_operator.cli", "run", "--verbose"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
        )
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(f"operator exited with {self._proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.progress_url}/healthz", timeout=1):
                    return
            except (TimeoutError, OSError):
                time.sleep(0.2)
        raise RuntimeError(f"operator not ready after {timeout}s:\n{self.log_tail()}")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return response.read().decode()  # type: ignore[no-any-return]

    def kill(self) -> None:
        """SIGKILL: no clean-up, as when a node dies."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(timeout=10)
        self._proc = None

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._proc = None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])
