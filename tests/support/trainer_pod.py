"""The real trainer as a local process standing in for a pod the operator created (the training Job's or
the preflight Job's): the command comes from the pod spec, the plan from the ConfigMap the pod mounts,
with its mounts pointed at local folders; the pod's status moves the way a kubelet would report it,
the container's termination message included. A stand-in for the node only: the trainer is the real one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes.client import ApiClient, CoreV1Api

from tests.support import kubelet
from tests.support.node import _resolve_env


@dataclass
class LocalTrainerPod:
    admin: ApiClient
    pod: Any
    pvc_root: Path  # how the claims appear to the trainer: <root>/<claim>/<path>
    work: Path  # this pod's scratch folder (plan, work dir, termination log)

    @classmethod
    def of_job(cls, admin: ApiClient, namespace: str, job: str, pvc_root: Path, work: Path) -> LocalTrainerPod:
        """The pod the Job controller created for Job `job` (waits for it)."""
        pods = kubelet.wait_for(
            f"a pod of Job {job}", lambda: kubelet.pods_of(admin, namespace, f"job-name={job}"), timeout=90
        )
        return cls(admin, pods[0], pvc_root, work)

    @property
    def termination_log(self) -> Path:
        return self.work / "termination-log"

    def _plan(self) -> Path:
        """The plan from the pod's plan ConfigMap, with this machine's folders for the pod's mounts."""
        volume = next(v for v in self.pod.spec.volumes if v.name == "plan")
        config_map = CoreV1Api(self.admin).read_namespaced_config_map(
            volume.config_map.name, self.pod.metadata.namespace
        )
        plan = json.loads(config_map.data["plan.json"])
        plan["mounts"]["pvcRoot"] = str(self.pvc_root)
        plan["progress"]["terminationLog"] = str(self.termination_log)
        plan["progress"]["intervalSeconds"] = 0.5
        plan["workDir"] = str(self.work / "work")
        self.work.mkdir(parents=True, exist_ok=True)
        path = self.work / "plan.json"
        path.write_text(json.dumps(plan))
        return path

    def run(self, *, finish: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Report the pod Running, run its command to the end, and (with `finish`) report how it ended."""
        (container,) = self.pod.spec.containers
        kubelet.set_running(self.admin, self.pod, container.name)
        argv = list(container.command) + list(container.args or [])
        assert argv[0] in ("peft-runtime", "torchrun") and "--plan" in argv, argv
        argv[argv.index("--plan") + 1] = str(self._plan())
        # Secrets and settings from the pod spec; in-pod paths (HOME, HF_HOME on the pod's volumes) stay out.
        pod_env = _resolve_env(self.admin, self.pod.metadata.namespace, container)
        env = {**os.environ, **{k: v for k, v in pod_env.items() if not v.startswith("/")}, "HF_HUB_OFFLINE": "1"}
        # The pod's programs from this interpreter's environment: peft-runtime, or torchrun starting one
        # peft-runtime per GPU (gloo on this CPU).
        program = ["peft_runtime.cli"] if argv[0] == "peft-runtime" else ["torch.distributed.run"]
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
        result = subprocess.run(
            [sys.executable, "-m", *program, *argv[1:]],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if finish:
            self.report_terminated(result.returncode)
        return result

    def report_terminated(self, exit_code: int) -> None:
        message = self.termination_log.read_text() if self.termination_log.exists() else ""
        (container,) = self.pod.spec.containers
        reason = "Completed" if exit_code == 0 else "Error"
        kubelet.set_terminated(self.admin, self.pod, exit_code, reason, message, container.name)
