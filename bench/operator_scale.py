"""Benchmark: the FineTuneJob controller at 50 and 500 jobs across 20 namespaces, against a real
kube-apiserver + etcd (built by `make controlplane`) and the operator as a real process.

For each size: seconds until every job has its Job and a status phase, API requests per job (from the
apiserver's own request counters, minus the benchmark's own create/list calls), and the operator's RSS.
Prints the per-job cost at 500 relative to 50 (goal: <= 1.5x).

    python -m bench.operator_scale [--sizes 50 500] [--namespaces 20]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import yaml
from kubernetes.client import CustomObjectsApi

from bench.control_plane import apiserver_requests, operator_on_control_plane, operator_requests, rss_mib
from tests.support.controlplane import REPO_ROOT, ControlPlane
from tests.support.operator_process import OperatorProcess

GROUP, VERSION = "peft.dev", "v1alpha1"
BENCH_VERBS = frozenset({("finetunejobs", "POST"), ("finetunejobs", "LIST"), ("namespaces", "POST")})


def _round(cp: ControlPlane, operator: OperatorProcess, size: int, namespaces: int, tag: str) -> dict[str, float]:
    template = yaml.safe_load((REPO_ROOT / "examples/finetunejob-lora.yaml").read_text())
    spaces = [f"bench-{tag}-{i}" for i in range(namespaces)]
    for ns in spaces:
        cp.ensure_namespace(ns)
    client = cp.api_client()
    custom = CustomObjectsApi(client)
    before = apiserver_requests(cp)
    start = time.monotonic()
    for i in range(size):
        body: dict[str, Any] = {**template, "metadata": {"name": f"job-{i}", "namespace": spaces[i % namespaces]}}
        custom.create_namespaced_custom_object(GROUP, VERSION, body["metadata"]["namespace"], "finetunejobs", body)
    while True:
        items = []
        for ns in spaces:
            items += custom.list_namespaced_custom_object(GROUP, VERSION, ns, "finetunejobs")["items"]
        done = sum(1 for i in items if (i.get("status") or {}).get("jobName") and (i.get("status") or {}).get("phase"))
        if done == size:
            break
        if time.monotonic() - start > 1800:
            raise SystemExit(f"only {done}/{size} jobs reconciled after 30 minutes")
        time.sleep(0.5)
    seconds = time.monotonic() - start
    requests = operator_requests(before, apiserver_requests(cp), excluded=BENCH_VERBS)
    client.close()
    assert operator._proc is not None
    return {
        "size": size,
        "seconds": seconds,
        "per_job_ms": 1000 * seconds / size,
        "requests_per_job": requests / size,
        "rss_mib": rss_mib(operator._proc.pid),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--namespaces", type=int, default=20)
    args = parser.parse_args()
    with operator_on_control_plane("finetunejobs.peft.dev") as (cp, operator):
        results = [_round(cp, operator, size, args.namespaces, str(size)) for size in args.sizes]
    print(f"{'jobs':>6} {'seconds':>8} {'ms/job':>8} {'requests/job':>13} {'operator RSS MiB':>17}")
    for r in results:
        print(
            f"{r['size']:>6.0f} {r['seconds']:>8.1f} {r['per_job_ms']:>8.1f} {r['requests_per_job']:>13.1f} {r['rss_mib']:>17.0f}"
        )
    first, last = results[0], results[-1]
    ratio = last["per_job_ms"] / first["per_job_ms"]
    print(f"per-job time at {last['size']:.0f} vs {first['size']:.0f}: {ratio:.2f}x (goal <= 1.5x)")
    print(
        f"requests per job at {last['size']:.0f} vs {first['size']:.0f}: {last['requests_per_job'] / first['requests_per_job']:.2f}x"
    )


if __name__ == "__main__":
    main()
