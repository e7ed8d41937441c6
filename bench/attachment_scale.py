"""Benchmark: one shared AdapterDeployment taking 50 and 500 AdapterAttachments from 20 tenant namespaces,
against a real kube-apiserver + etcd (built by `make controlplane`) and the operator as a real process.

For each size: seconds from the first create until every attachment is Accepted with its status written; the
operator's API requests per attachment from the first create until it is quiet (no reconcile for 3 s: the
create handlers that were still queued when the last attachment was accepted have run), from the apiserver's
own request counters minus this script's creates and polls; and the operator's RSS. No engine pod runs (no kubelet): this measures the
control plane's side of admission and reporting, not loading. Each size gets its own deployment and
namespaces (the earlier size's objects stay, as on a cluster that grows). Prints the per-attachment cost at
the larger size relative to the smaller.

    python -m bench.attachment_scale [--sizes 50 500] [--namespaces 20]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from kubernetes.client import CustomObjectsApi

from bench.control_plane import apiserver_requests, operator_on_control_plane, operator_requests, rss_mib
from tests.support.controlplane import ControlPlane
from tests.support.operator_process import OperatorProcess

GROUP, VERSION = "peft.dev", "v1alpha1"
SHA = "0" * 64


def _deployment(namespace: str, size: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AdapterDeployment",
        "metadata": {"name": "shared", "namespace": namespace},
        "spec": {
            "baseModel": {"uri": "pvc://models/base"},
            "runtime": {"engine": "builtin", "replicas": 1, "resources": {"gpus": 0}},
            "limits": {"maxAdapters": size},
            "attachments": {"from": "All", "maxPerNamespace": size},
        },
    }


def _attachment(namespace: str, name: str, platform: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AdapterAttachment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "adapterDeploymentRef": {"namespace": platform, "name": "shared"},
            "name": name,
            "source": {"uri": f"s3://{namespace}-adapters/{name}", "sha256": SHA},
        },
    }


def _accepted(custom: CustomObjectsApi, spaces: list[str]) -> int:
    items: list[dict[str, Any]] = []
    for ns in spaces:
        items += custom.list_namespaced_custom_object(GROUP, VERSION, ns, "adapterattachments")["items"]
    conditions = [(i.get("status") or {}).get("conditions") or [] for i in items]
    return sum(any(c["type"] == "Accepted" and c["status"] == "True" for c in cs) for cs in conditions)


def _reconciles(operator: OperatorProcess) -> float:
    lines = operator.metrics().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("peft_operator_reconciles_total{"))


def _wait_quiet(operator: OperatorProcess, quiet: float = 3.0) -> None:
    last, since = _reconciles(operator), time.monotonic()
    while time.monotonic() - since < quiet:
        time.sleep(0.5)
        if (now := _reconciles(operator)) != last:
            last, since = now, time.monotonic()


def _round(cp: ControlPlane, operator: OperatorProcess, size: int, namespaces: int) -> dict[str, float]:
    platform = f"platform-{size}"
    spaces = [f"tenant-{size}-{i}" for i in range(namespaces)]
    for ns in [platform, *spaces]:
        cp.ensure_namespace(ns)
    client = cp.api_client()
    custom = CustomObjectsApi(client)
    before = apiserver_requests(cp)
    start = time.monotonic()
    custom.create_namespaced_custom_object(GROUP, VERSION, platform, "adapterdeployments", _deployment(platform, size))
    for i in range(size):
        ns = spaces[i % namespaces]
        custom.create_namespaced_custom_object(
            GROUP, VERSION, ns, "adapterattachments", _attachment(ns, f"a-{i}", platform)
        )
    polls = 1
    while (done := _accepted(custom, spaces)) < size:
        if time.monotonic() - start > 1800:
            raise SystemExit(f"only {done}/{size} attachments accepted after 30 minutes")
        time.sleep(0.5)
        polls += 1
    seconds = time.monotonic() - start
    _wait_quiet(operator)
    ours = {
        ("adapterdeployments", "POST"): 1.0,
        ("adapterattachments", "POST"): float(size),
        ("adapterattachments", "LIST"): float(polls * namespaces),
    }
    requests = operator_requests(before, apiserver_requests(cp), ours=ours)
    client.close()
    assert operator._proc is not None
    return {
        "size": size,
        "seconds": seconds,
        "per_attachment_ms": 1000 * seconds / size,
        "requests_per_attachment": requests / size,
        "rss_mib": rss_mib(operator._proc.pid),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--namespaces", type=int, default=20)
    args = parser.parse_args()
    with operator_on_control_plane("adapterattachments.peft.dev") as (cp, operator):
        results = [_round(cp, operator, size, args.namespaces) for size in args.sizes]
    print(
        f"{'attachments':>11} {'seconds':>8} {'ms/attachment':>14} {'requests/attachment/min':>24} {'operator RSS MiB':>17}"
    )
    for r in results:
        print(
            f"{r['size']:>11.0f} {r['seconds']:>8.1f} {r['per_attachment_ms']:>14.1f} "
            f"{r['requests_per_attachment']:>20.1f} {r['rss_mib']:>17.0f}"
        )
    first, last = results[0], results[-1]
    print(
        f"time to accept, per attachment, at {last['size']:.0f} vs {first['size']:.0f}: "
        f"{last['per_attachment_ms'] / first['per_attachment_ms']:.2f}x"
    )
    print(
        f"requests per attachment at {last['size']:.0f} vs {first['size']:.0f}: "
        f"{last['requests_per_attachment'] / first['requests_per_attachment']:.2f}x"
    )


if __name__ == "__main__":
    main()
