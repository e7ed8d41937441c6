"""What the control-plane benchmarks share: a real kube-apiserver + etcd with the CRDs and the operator as a
real process, the apiserver's own request counters, and the operator's RSS."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.support.controlplane import REPO_ROOT, ControlPlane
from tests.support.operator_process import OperatorProcess, operator_kubeconfig

Counts = dict[tuple[str, str], float]


@contextlib.contextmanager
def operator_on_control_plane(crd: str) -> Iterator[tuple[ControlPlane, OperatorProcess]]:
    """The control plane with the project's CRDs (waiting for `crd` to be Established) and the operator."""
    with tempfile.TemporaryDirectory() as work, ControlPlane() as cp:
        cp.kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "crds"))
        cp.kubectl("wait", "--for=condition=Established", f"crd/{crd}")
        operator = OperatorProcess(operator_kubeconfig(cp), Path(work) / "operator.log").start()
        try:
            yield cp, operator
        finally:
            operator.stop()


def apiserver_requests(cp: ControlPlane) -> Counts:
    """apiserver_request_total by (resource, verb), summed over the other labels."""
    text = cp.kubectl("get", "--raw", "/metrics").stdout
    totals: Counts = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(part.split("=", 1) for part in line[line.index("{") + 1 : line.index("}")].split(","))
        key = (labels.get("resource", '""').strip('"'), labels.get("verb", '""').strip('"'))
        totals[key] = totals.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def operator_requests(
    before: Counts, after: Counts, *, excluded: frozenset[tuple[str, str]] = frozenset(), ours: Counts | None = None
) -> float:
    """Requests between the two counts, less the benchmark's own: whole (resource, verb) pairs in `excluded`,
    and `ours` counted exactly; the metrics reads (no resource) never count."""
    ours = ours or {}
    return sum(v - before.get(k, 0.0) - ours.get(k, 0.0) for k, v in after.items() if k not in excluded and k[0] != "")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")
