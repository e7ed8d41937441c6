"""A real single-node Kubernetes cluster, in its own namespaces: pods really run (containerd, runc, the
bridge CNI), images come from `make images`, Services route through kube-proxy.

tests/node/namespace.sh sets up the PID, mount and network namespaces (private /run, /var/lib, /var/log, a
node IP) and tests/support/node_services.py starts the control plane, containerd, kube-scheduler, the
kubelet and kube-proxy in them. From the host the apiserver is reached at a loopback port that forwards into
the namespace (`kubeconfig`); everything else on the node's network is reached with `in_node` (nsenter).
Stopping ends the namespace, which takes every process, mount and interface with it.

    node = RealNode(Path(".node")).start()
    node.import_image("ghcr.io/peft-operator/runtime:0.1.0")
    node.kubectl("get", "nodes")
    node.stop()

`python -m tests.support.real_node up|down` (make node-up / node-down) does the same for a person.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.controlplane import REPO_ROOT, KubectlError, ensure_binaries
from tests.support.node_images import export_image, image_id, project_images

NAMESPACE_SCRIPT = REPO_ROOT / "tests" / "node" / "namespace.sh"
NODE_IP = "172.31.0.2"
NODE_BINARIES = ("kubelet", "kube-scheduler", "kube-proxy", "pause", "coredns")
TOOLS = ("unshare", "nsenter", "containerd", "ctr", "runc", "iptables", "/usr/lib/cni/bridge")
CGROUP_ROOT = Path("/sys/fs/cgroup")


class NodeError(RuntimeError):
    """The node could not start (the message carries its logs)."""


def missing_tools() -> list[str]:
    """What `make node-tools` installs, and is not here."""
    return [t for t in TOOLS if not (os.access(t, os.X_OK) if t.startswith("/") else shutil.which(t))]


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class RealNode:
    """The node: `start`, then `kubectl`, `api_client`, `in_node`, `import_image`; `stop`."""

    def __init__(self, node_dir: Path, images_dir: Path | None = None) -> None:
        self.node_dir = node_dir.resolve()
        self.images_dir = (images_dir or REPO_ROOT / ".images").resolve()
        self.state = self.node_dir / "state"
        self.containerd_root = self.node_dir / "containerd"
        self.kubeconfig = self.node_dir / "kubeconfig"
        self.pid_file = self.node_dir / "pid"
        self.startup_seconds: float | None = None

    # ----------------------------------------------------------------- lifecycle

    @property
    def init_pid(self) -> int:
        """The host PID of the namespace's PID 1 (namespace.sh)."""
        return int(self.pid_file.read_text())

    def start(self, timeout: float = 180.0) -> RealNode:
        if missing := missing_tools():
            raise NodeError(f"the real node needs {', '.join(missing)}: run `make node-tools` (as root)")
        if os.geteuid() != 0:
            raise NodeError("the real node needs root (namespaces, mounts, containerd)")
        if self.pid_file.exists() and _alive(self.init_pid):
            raise NodeError(f"a node is already running (PID {self.init_pid}): `make node-down` first")
        bin_dir = ensure_binaries(build=False)  # `make node-bin` builds them
        absent = [b for b in NODE_BINARIES if not os.access(bin_dir / b, os.X_OK)]
        if absent:
            raise NodeError(f"{', '.join(absent)} missing in {bin_dir}: run `make node-bin`")
        shutil.rmtree(self.state, ignore_errors=True)
        self.state.mkdir(parents=True)
        t0 = time.monotonic()
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(64)
            port = listener.getsockname()[1]
            unshare = self._spawn(bin_dir, listener.fileno())
        ready = self._wait_ready(unshare, timeout)
        self.startup_seconds = time.monotonic() - t0
        admin = json.loads((self.state / "controlplane" / "admin.kubeconfig").read_text())
        admin["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
        self.kubeconfig.write_text(json.dumps(admin, indent=2))
        self.kubeconfig.chmod(0o600)
        (self.node_dir / "ready.json").write_text(json.dumps({**ready, "hostPort": port}))
        return self

    def _spawn(self, bin_dir: Path, listen_fd: int) -> subprocess.Popen[bytes]:
        cmd = ["unshare", "--pid", "--mount", "--net", "--fork", "--propagation", "private", "--mount-proc"]
        cmd += [str(NAMESPACE_SCRIPT), str(self.state), str(self.containerd_root)]
        cmd += [sys.executable, "-m", "tests.support.node_services", "--state", str(self.state)]
        cmd += ["--bin-dir", str(bin_dir), "--listen-fd", str(listen_fd), "--node-ip", NODE_IP]
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), NODE_IP=NODE_IP)
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        with open(self.node_dir / "node.log", "ab") as log:
            return subprocess.Popen(
                cmd, cwd=REPO_ROOT, env=env, pass_fds=(listen_fd,), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def _wait_ready(self, unshare: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not (self.state / "ready").exists():
            if children := _children(unshare.pid):
                self.pid_file.write_text(str(children[0]))
            if unshare.poll() is not None or (self.state / "failed").exists() or time.monotonic() > deadline:
                self._kill(unshare)
                raise NodeError(f"the node did not start; logs in {self.state / 'logs'}:\n{self.log_tail()}")
            time.sleep(0.2)
        return dict(json.loads((self.state / "ready").read_text()))

    def _kill(self, unshare: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(unshare.pid, signal.SIGKILL)
        unshare.wait()
        self._remove_cgroups()

    def log_tail(self, lines: int = 40) -> str:
        logs = [self.node_dir / "node.log", *sorted((self.state / "logs").glob("*.log"))]
        logs += sorted((self.state / "controlplane" / "logs").glob("*.log"))
        tails = []
        for log in logs:
            with contextlib.suppress(OSError):
                tails.append(
                    f"----- {log.name} -----\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
                )
        return "\n".join(tails)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM to the namespace's PID 1; when it is gone, so is everything it held."""
        if not self.pid_file.exists():
            return
        pid = self.init_pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)  # the kernel then kills the rest of the namespace
            while _alive(pid):
                time.sleep(0.1)
        self._remove_cgroups()
        self.pid_file.unlink(missing_ok=True)

    def _remove_cgroups(self) -> None:
        """The cgroups runc made for the node's containers (cgroupfs is the host's): deepest first."""
        for hierarchy in CGROUP_ROOT.iterdir():
            top = hierarchy / "k8s.io"
            if top.is_dir():
                for path in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                    if path.is_dir():
                        with contextlib.suppress(OSError):
                            path.rmdir()
                with contextlib.suppress(OSError):
                    top.rmdir()

    # ----------------------------------------------------------------- using it

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        bin_dir = ensure_binaries(build=False)
        cmd = [str(bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args]
        env = dict(os.environ, KUBERC="off")
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, env=env, check=False)
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, ["kubectl", "--kubeconfig", "x", *args], proc.stdout, proc.stderr)
        return proc

    def api_client(self) -> Any:
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def in_node(self, *argv: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `argv` in the node's network and mount namespaces (as a process on the node would)."""
        cmd = ["nsenter", f"--target={self.init_pid}", "--net", "--mount", *argv]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=check)

    def container_processes(self, container_id: str) -> list[int]:
        """Host PIDs of a running container's processes (runc puts each container in its own cgroup)."""
        for top in sorted(h / "k8s.io" for h in CGROUP_ROOT.iterdir() if (h / "k8s.io").is_dir()):
            for procs in top.rglob(f"{container_id}/cgroup.procs"):
                return [int(pid) for pid in procs.read_text().split()]
        raise NodeError(f"no cgroup for container {container_id} under {CGROUP_ROOT}/*/k8s.io")

    def import_image(self, image: str) -> bool:
        """Put `image` from buildah's storage into the node's containerd, unless it holds this build already."""
        wanted = image_id(self.images_dir, image)
        stamp = self.containerd_root / "imported" / image.replace("/", "_").replace(":", "_")
        if stamp.exists() and stamp.read_text() == wanted:
            return False
        archive = export_image(self.images_dir, image, self.node_dir / "image.tar")
        try:
            # The earlier build first, by name and by the ID the CRI also names it with, collected at once
            # (--sync): a runtime image takes 12 GB in containerd, packed and unpacked.
            earlier = [image, f"sha256:{stamp.read_text()}"] if stamp.exists() else [image]
            self.in_node("ctr", "-n", "k8s.io", "images", "rm", "--sync", *earlier, check=False)
            self.in_node("ctr", "-n", "k8s.io", "images", "import", str(archive), timeout=1800)
        finally:
            archive.unlink(missing_ok=True)
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(wanted)
        return True


def main(argv: list[str]) -> int:
    node = RealNode(
        Path(os.environ.get("NODE_DIR", REPO_ROOT / ".node")), Path(os.environ.get("IMAGES_DIR", ".images"))
    )
    if argv[:1] == ["up"]:
        node.node_dir.mkdir(parents=True, exist_ok=True)
        node.start()
        print(f"node up in {node.startup_seconds:.0f}s; importing the images (once per build)...", flush=True)
        for image in project_images():
            print(f"  {image}: {'imported' if node.import_image(image) else 'already there'}", flush=True)
        print(f"export KUBECONFIG={node.kubeconfig}\nkubectl get nodes   # `make node-down` stops it")
        return 0
    if argv[:1] == ["down"]:
        node.stop()
        print("node down")
        return 0
    print("usage: python -m tests.support.real_node up|down", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
