"""Render the chart with the Helm SDK (`helm template` without a binary) and read its rule files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "charts" / "peft-operator"
FILES = CHART_DIR / "files"
RELEASE = "peft-operator"
NAMESPACE = "peft-system"

# Value sets the chart must render, lint and validate cleanly with.
SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced": {"watchNamespaces": ["tenant-a", "tenant-b"]},
    "network-policy": {"networkPolicy": {"enabled": True}},
    "network-policy-namespaced": {"networkPolicy": {"enabled": True}, "watchNamespaces": ["tenant-a"]},
    "service-monitor": {
        "metrics": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
            "engines": {"podMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
        }
    },
    "single-replica": {"replicas": 1},
    "existing-secret": {"progress": {"existingSecret": "my-progress-key", "existingSecretKey": "key"}},
    "everything": {
        "replicas": 3,
        "watchNamespaces": ["tenant-a"],
        "networkPolicy": {"enabled": True, "extraEgress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]},
        "metrics": {"serviceMonitor": {"enabled": True}},
        "image": {"repository": "registry.example/peft-operator", "digest": "sha256:" + "a" * 64},
        "runtimeImage": {"repository": "registry.example/runtime", "tag": "0.1.0-cuda"},
        "imagePullSecrets": [{"name": "regcred"}],
        "serviceAccount": {"name": "peft", "annotations": {"iam.example/role": "peft"}},
        "verbose": True,
        "extraEnv": [{"name": "TZ", "value": "UTC"}],
        "priorityClassName": "system-cluster-critical",
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
        "topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}
        ],
        "podAnnotations": {"example.com/team": "ml-platform"},
    },
}


def render(
    chart: Any, values: dict[str, Any] | None = None, *, name: str = RELEASE, namespace: str = NAMESPACE
) -> list[dict[str, Any]]:
    """Every object the chart renders (NOTES.txt left out), in template order."""
    manifests = chart.render(values or {}, name=name, namespace=namespace)
    objects: list[dict[str, Any]] = []
    for path in sorted(manifests):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.load_all(manifests[path], Loader=_LOADER) if doc)
    return objects


def manifest_text(
    chart: Any,
    values: dict[str, Any] | None = None,
    *,
    name: str = RELEASE,
    namespace: str = NAMESPACE,
    skip: tuple[str, ...] = (),
) -> str:
    """The rendered manifests as Helm sends them (Go YAML reads them: no PyYAML round trip in between)."""
    manifests = chart.render(values or {}, name=name, namespace=namespace)
    leave_out = ("NOTES.txt", *skip)
    return "\n---\n".join(manifests[p] for p in sorted(manifests) if not p.endswith(leave_out))


def notes(chart: Any, values: dict[str, Any] | None = None) -> str:
    manifests = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE)
    return next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in of_kind(objects, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def rules(name: str) -> Any:
    """A rule file from charts/peft-operator/files/ (the single source of the operator's RBAC)."""
    return yaml.safe_load((FILES / name).read_text())


def clusterwide_rules() -> list[dict[str, Any]]:
    """The ClusterRole of an operator that watches every namespace."""
    return rules("cluster-rules.yaml") + rules("operator-rules.yaml")  # type: ignore[no-any-return]


def namespaced_rules() -> list[dict[str, Any]]:
    """The Role in each namespace of `watchNamespaces`."""
    return rules("operator-rules.yaml")  # type: ignore[no-any-return]


def leader_election_rules() -> list[dict[str, Any]]:
    """The Role in the release namespace (the Lease)."""
    return rules("leader-election-rules.yaml")  # type: ignore[no-any-return]


def operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "operator")  # type: ignore[no-any-return]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def main(argv: list[str] | None = None) -> int:
    """`helm lint --strict` and `helm template` through the Helm SDK, for `make chart-lint` / `chart-template`."""
    import argparse
    import sys

    import helm_python

    parser = argparse.ArgumentParser(prog="python -m tests.chart.rendering", description=main.__doc__)
    parser.add_argument("command", choices=["lint", "template"])
    parser.add_argument("-f", "--values", type=Path, action="append", default=[], help="values file (repeatable)")
    parser.add_argument("--name", default=RELEASE, help="release name")
    parser.add_argument("-n", "--namespace", default=NAMESPACE, help="release namespace")
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    for path in args.values:
        values = _merge(values, yaml.safe_load(path.read_text()) or {})

    if args.command == "template":
        chart = helm_python.Chart.load(CHART_DIR)
        try:
            print(manifest_text(chart, values, name=args.name, namespace=args.namespace))
        finally:
            chart.close()
        return 0

    failed = False
    for label, scenario in ({"given values": values} if args.values else SCENARIOS).items():
        report = helm_python.lint(CHART_DIR, scenario, strict=True, namespace=args.namespace)
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        failed |= bool(problems or report["errors"])
        print(f"{'FAIL' if problems or report['errors'] else 'ok  '} helm lint --strict ({label})")
        for message in problems:
            print(f"     {message['path']}: {message['error'].strip()}")
    print(f"{CHART_DIR.relative_to(REPO_ROOT)}: {'lint failed' if failed else 'lint clean'}", file=sys.stderr)
    return 1 if failed else 0


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = (
            _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


if __name__ == "__main__":
    raise SystemExit(main())
