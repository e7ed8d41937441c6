"""The real node's processes, started inside its namespaces by tests/node/namespace.sh (see real_node.py):
etcd, kube-apiserver, kube-controller-manager (tests/support/controlplane.py), containerd with runc and the
bridge CNI, kube-scheduler, the kubelet, kube-proxy and CoreDNS (cluster DNS on the node IP, port 53). The apiserver is reached from the host through a
listening socket the host opened and passed in (`--listen-fd`): connections accepted on it are forwarded to
the apiserver inside. Writes `<state>/ready` when the node is Ready, then runs until SIGTERM.

    python -m tests.support.node_services --state DIR --listen-fd N --node-ip IP
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.support.controlplane import ControlPlane, _issue, _make_ca, _Proc, free_port
from tests.support.node_images import PAUSE_IMAGE, write_pause_archive

NODE_NAME = "peft-node"
POD_SUBNET = "10.244.0.0/16"
CONTAINERD_SOCKET = "/run/containerd/containerd.sock"
CNI_BIN_DIR = "/usr/lib/cni"  # Debian's containernetworking-plugins
CLUSTER_DOMAIN = "cluster.local"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _kubelet_client_pki(pki: Path) -> None:
    """The CA the kubelet trusts for client certificates, and the apiserver's certificate under it (logs, exec)."""
    ca = _make_ca("peft-node-kubelet-client-ca")
    client = _issue(ca, "kube-apiserver-kubelet-client", orgs=["system:masters"])
    pki.mkdir(parents=True, exist_ok=True)
    (pki / "kubelet-client-ca.crt").write_bytes(ca.cert_pem)
    (pki / "apiserver-kubelet-client.crt").write_bytes(client.cert_pem)
    (pki / "apiserver-kubelet-client.key").write_bytes(client.key_pem)


def _control_plane(state: Path, node_ip: str) -> ControlPlane:
    pki = state / "node-pki"
    _kubelet_client_pki(pki)
    return ControlPlane(
        workdir=state / "controlplane",
        controller_manager=True,
        keep_workdir=True,
        disable_admission_plugins=(),  # ServiceAccount admission on: pods get their tokens, as in a cluster
        extra_apiserver_args=[
            "--bind-address=0.0.0.0",  # pods reach it at the node IP through the `kubernetes` Service
            f"--advertise-address={node_ip}",
            "--endpoint-reconciler-type=lease",
            "--kubelet-preferred-address-types=InternalIP",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
        ],
    )


def _containerd_config(state: Path) -> Path:
    cni_conf = state / "cni" / "net.d"
    conflist = {
        "cniVersion": "0.4.0",
        "name": "peft-node",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_SUBNET}]], "routes": [{"dst": "0.0.0.0/0"}]},
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    _write(cni_conf / "10-peft-node.conflist", json.dumps(conflist, indent=2))
    # restrict_oom_score_adj: no CAP_SYS_RESOURCE to lower scores here; the opt plugin would write /opt.
    return _write(
        state / "containerd.toml",
        f"""version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{CONTAINERD_SOCKET}"
[plugins."io.containerd.internal.v1.opt"]
  path = "/var/lib/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{cni_conf}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
""",
    )


def _kubelet_config(state: Path, node_ip: str) -> Path:
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node_ip,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": free_port(),
        "readOnlyPort": 0,
        "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCKET}",
        # This host mounts cgroup v1 and v2 side by side ("hybrid"), which the kubelet counts as v1.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": False,
        "cgroupRoot": "/",
        "enforceNodeAllocatable": [],
        "failSwapOn": False,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(state / "node-pki" / "kubelet-client-ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        # Images are imported, never pulled: never collect them, and evict only when really short.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "volumePluginDir": "/var/lib/kubelet/volume-plugins",
        "resolvConf": "/etc/resolv.conf",
        "clusterDomain": CLUSTER_DOMAIN,
        "clusterDNS": [node_ip],
        "serializeImagePulls": False,
    }
    return _write(state / "kubelet.yaml", json.dumps(config, indent=2))


def _kube_proxy_config(state: Path, kubeconfig: Path) -> Path:
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "hostnameOverride": NODE_NAME,
        "clusterCIDR": POD_SUBNET,
        "healthzBindAddress": f"127.0.0.1:{free_port()}",
        "metricsBindAddress": f"127.0.0.1:{free_port()}",
        # No br_netfilter for pod-to-Service-to-pod on the same bridge: masquerade so replies come back
        # through the node.
        "iptables": {"masqueradeAll": True},
        # conntrack limits are host-wide: leave them alone.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }
    return _write(state / "kube-proxy.yaml", json.dumps(config, indent=2))


def _corefile(state: Path, kubeconfig: Path) -> Path:
    """Names of Services and pods from the apiserver, as a kubeadm cluster's CoreDNS answers them."""
    return _write(
        state / "Corefile",
        f""".:53 {{
    errors
    health 127.0.0.1:{free_port()}
    ready 127.0.0.1:{free_port()}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 30
}}
""",
    )


def _wait_socket(path: Path, proc: _Proc, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if not proc.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{proc.name} did not open {path}:\n{proc.log_tail()}")
        time.sleep(0.1)


def _node_ready(cp: ControlPlane) -> bool:
    proc = cp.kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
    if proc.returncode != 0:
        return False
    conditions = json.loads(proc.stdout)["status"].get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _forward(listener: socket.socket, port: int) -> None:
    """Accept on the host's socket; connect to the apiserver in this namespace; copy both ways."""

    def pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                s.close()

    while True:
        client, _ = listener.accept()
        try:
            upstream = socket.create_connection(("127.0.0.1", port))
        except OSError:
            client.close()
            continue
        threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()


class NodeServices:
    """Everything the node runs, started in order and stopped in reverse."""

    def __init__(self, state: Path, node_ip: str) -> None:
        self.state, self.node_ip = state, node_ip
        self.log_dir = state / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.cp = _control_plane(state, node_ip)
        self.procs: list[_Proc] = []

    def _spawn(self, name: str, args: list[str]) -> _Proc:
        proc = _Proc(name, args, self.log_dir / f"{name}.log")
        self.procs.append(proc)
        return proc

    def _kubeconfig(self, user: str, groups: list[str]) -> Path:
        return self.cp.mint_user_kubeconfig(user, groups)

    def start(self, bin_dir: Path) -> None:
        self.cp.start()
        containerd = self._spawn("containerd", ["containerd", "--config", str(_containerd_config(self.state))])
        _wait_socket(Path(CONTAINERD_SOCKET), containerd)
        self._ctr("images", "import", str(write_pause_archive(bin_dir / "pause", self.state / "pause.tar")))
        self._forget_old_containers()
        scheduler_cfg = self._kubeconfig("system:kube-scheduler", [])
        self._spawn(
            "kube-scheduler",
            [
                str(bin_dir / "kube-scheduler"),
                f"--kubeconfig={scheduler_cfg}",
                f"--authentication-kubeconfig={scheduler_cfg}",
                f"--authorization-kubeconfig={scheduler_cfg}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
            ],
        )
        self._spawn(
            "kubelet",
            [
                str(bin_dir / "kubelet"),
                f"--config={_kubelet_config(self.state, self.node_ip)}",
                f"--kubeconfig={self._kubeconfig(f'system:node:{NODE_NAME}', ['system:nodes'])}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={self.node_ip}",
                "--v=1",
            ],
        )
        proxy_cfg = _kube_proxy_config(self.state, self._kubeconfig("system:kube-proxy", []))
        self._spawn("kube-proxy", [str(bin_dir / "kube-proxy"), f"--config={proxy_cfg}", "--v=1"])
        # A node component here rather than a Deployment: the same server, without an image to build.
        corefile = _corefile(self.state, self._kubeconfig("system:coredns", ["system:masters"]))
        self._spawn("coredns", [str(bin_dir / "coredns"), "-conf", str(corefile)])

    def _ctr(self, *args: str) -> str:
        cmd = ["ctr", "--address", CONTAINERD_SOCKET, "-n", "k8s.io", *args]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

    def _forget_old_containers(self) -> None:
        """The image store is kept between runs; the containers of an earlier node are not."""
        old = self._ctr("containers", "list", "--quiet").split()
        if old:
            self._ctr("containers", "delete", *old)

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not _node_ready(self.cp):
            dead = [p for p in self.procs if not p.alive()]
            if dead or time.monotonic() > deadline:
                logs = "\n".join(f"----- {p.name} -----\n{p.log_tail()}" for p in dead or self.procs)
                raise RuntimeError(f"node {NODE_NAME} not Ready ({[p.name for p in dead]} exited):\n{logs}")
            time.sleep(0.2)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(timeout=15)
        self.cp.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--bin-dir", type=Path, required=True)
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--node-ip", required=True)
    args = parser.parse_args(argv)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    services = NodeServices(args.state, args.node_ip)
    try:
        t0 = time.monotonic()
        services.start(args.bin_dir)
        services.wait_ready()
        port = int(services.cp.server.rsplit(":", 1)[1])
        listener = socket.socket(fileno=args.listen_fd)
        threading.Thread(target=_forward, args=(listener, port), daemon=True).start()
        ready: dict[str, Any] = {"apiserverPort": port, "startupSeconds": round(time.monotonic() - t0, 1)}
        (args.state / "ready").write_text(json.dumps(ready))
        stopping.wait()
    except Exception as error:
        (args.state / "failed").write_text(str(error))
        raise
    finally:
        services.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
