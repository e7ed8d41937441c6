"""The chart against a REAL kube-apiserver (tests/controlplane): its CRDs and every rendered manifest are
accepted by `kubectl apply --server-side`, the ServiceAccount can do exactly what the rule files say, and
the operator started the way the Deployment starts it (same arguments, environment and identity) works
with those permissions: cluster-wide, namespaced, and as two replicas electing a leader on the Lease."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.rendering import (
    NAMESPACE,
    REPO_ROOT,
    SCENARIOS,
    clusterwide_rules,
    env_of,
    leader_election_rules,
    manifest_text,
    namespaced_rules,
    one,
    operator_container,
    render,
    rules,
)
from tests.support.controlplane import ControlPlane, free_port
from tests.support.secrets import create_referenced_secrets

pytestmark = pytest.mark.integration

RELEASE = "peft-operator"
SA_USER = f"system:serviceaccount:{NAMESPACE}:{RELEASE}"
NS_RELEASE, NS_RELEASE_NAMESPACE, NS_WATCHED = "peft-operator-ns", "peft-ns-system", "tenant-y"
NS_SA_USER = f"system:serviceaccount:{NS_RELEASE_NAMESPACE}:{NS_RELEASE}"
TENANT = "tenant-x"
QUICKSTART = REPO_ROOT / "examples" / "finetunejob-quickstart.yaml"


def _apply(cp: ControlPlane, manifests: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """`kubectl apply --server-side` of YAML text exactly as the chart renders it."""
    return cp.kubectl("apply", "--server-side", "--field-manager=helm", *extra, "-f", "-", input=manifests)


@pytest.fixture(scope="module")
def chart_crds(controlplane: ControlPlane, chart: Any) -> list[str]:
    """The chart's crds/, applied the way `helm install` does (before the templates), and Established."""
    _apply(controlplane, "\n---\n".join(c["data"] for c in chart.crds))
    names = [yaml.safe_load(c["data"])["metadata"]["name"] for c in chart.crds]
    controlplane.kubectl("wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}" for n in names))
    return names


@pytest.fixture(scope="module")
def installed(controlplane: ControlPlane, chart: Any, chart_crds: list[str]) -> list[dict[str, Any]]:
    """The default release in peft-system, plus a namespaced release watching tenant-y."""
    for namespace in (NAMESPACE, NS_RELEASE_NAMESPACE, TENANT, NS_WATCHED, "tenant-a", "tenant-b"):
        controlplane.ensure_namespace(namespace)
    text = manifest_text(chart)
    _apply(controlplane, text)
    _apply(
        controlplane,
        manifest_text(chart, {"watchNamespaces": [NS_WATCHED]}, name=NS_RELEASE, namespace=NS_RELEASE_NAMESPACE),
    )
    return [doc for doc in yaml.safe_load_all(text) if doc]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_apiserver_accepts_every_rendered_manifest(
    controlplane: ControlPlane, chart: Any, installed: list[dict[str, Any]], scenario: str
) -> None:
    # ServiceMonitor and PodMonitor need the prometheus-operator's CRDs, which this cluster does not have.
    text = manifest_text(chart, SCENARIOS[scenario], skip=("servicemonitor.yaml", "podmonitor.yaml"))
    objects = [doc for doc in yaml.safe_load_all(text) if doc]
    result = _apply(controlplane, text, "--dry-run=server", "--force-conflicts")
    assert len(result.stdout.strip().splitlines()) == len(objects), result.stdout


def test_release_objects_exist_as_rendered(controlplane: ControlPlane, installed: list[dict[str, Any]]) -> None:
    for obj in installed:
        namespace = ["-n", obj["metadata"]["namespace"]] if "namespace" in obj["metadata"] else []
        got = controlplane.kubectl("get", obj["kind"].lower(), obj["metadata"]["name"], *namespace, "-o", "yaml")
        assert yaml.safe_load(got.stdout)["metadata"]["labels"] == obj["metadata"]["labels"]


def _can(controlplane: ControlPlane, user: str, verb: str, resource: str, namespace: str | None = None) -> bool:
    args = ["auth", "can-i", verb, resource, f"--as={user}"]
    args += ["-n", namespace] if namespace else []
    return controlplane.kubectl(*args, check=False).stdout.strip() == "yes"


def _access_reviews(
    controlplane: ControlPlane, user: str, rule_list: list[dict[str, Any]], namespace: str | None
) -> list[str]:
    """Every (verb, resource) a rule list grants, checked with SubjectAccessReviews; returns the denied ones."""
    from kubernetes import client

    denied = []
    with controlplane.api_client() as api:
        authz = client.AuthorizationV1Api(api)
        for rule in rule_list:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    name, _, sub = resource.partition("/")
                    for verb in rule["verbs"]:
                        attributes = {"group": group, "resource": name, "subresource": sub or None, "verb": verb}
                        if namespace:
                            attributes["namespace"] = namespace
                        review = authz.create_subject_access_review(
                            {"spec": {"user": user, "resourceAttributes": attributes}}
                        )
                        if not review.status.allowed:
                            denied.append(f"{verb} {group or 'core'}/{resource} in {namespace or 'the cluster'}")
    return denied


def test_service_account_can_do_everything_the_rule_files_grant(
    controlplane: ControlPlane, installed: list[dict[str, Any]]
) -> None:
    assert _access_reviews(controlplane, SA_USER, clusterwide_rules(), TENANT) == []
    assert _access_reviews(controlplane, SA_USER, rules("cluster-rules.yaml"), None) == []
    assert _access_reviews(controlplane, SA_USER, leader_election_rules(), NAMESPACE) == []
    assert _can(controlplane, SA_USER, "create", "jobs", TENANT)
    assert _can(controlplane, SA_USER, "patch", "finetunejobs.peft.dev/status", TENANT)
    assert _can(controlplane, SA_USER, "update", "leases.coordination.k8s.io", NAMESPACE)
    assert not _can(controlplane, SA_USER, "update", "leases.coordination.k8s.io", TENANT)


@pytest.mark.parametrize(
    ("verb", "resource"),
    [
        ("delete", "secrets"),
        ("list", "secrets"),
        ("update", "finetunejobs.peft.dev"),
        ("create", "finetunejobs.peft.dev"),
        ("delete", "deployments.apps"),
        ("create", "pods"),
        ("create", "roles.rbac.authorization.k8s.io"),
        ("create", "customresourcedefinitions.apiextensions.k8s.io"),
        ("delete", "leases.coordination.k8s.io"),
        ("impersonate", "serviceaccounts"),
    ],
)
def test_service_account_cannot_do_more(
    controlplane: ControlPlane, installed: list[dict[str, Any]], verb: str, resource: str
) -> None:
    assert not _can(controlplane, SA_USER, verb, resource, TENANT)


def test_namespaced_release_is_confined_to_its_namespaces(
    controlplane: ControlPlane, installed: list[dict[str, Any]]
) -> None:
    assert _access_reviews(controlplane, NS_SA_USER, namespaced_rules(), NS_WATCHED) == []
    assert _access_reviews(controlplane, NS_SA_USER, rules("cluster-rules.yaml"), None) == []
    assert _can(controlplane, NS_SA_USER, "create", "jobs", NS_WATCHED)
    assert not _can(controlplane, NS_SA_USER, "create", "jobs", TENANT)
    assert not _can(controlplane, NS_SA_USER, "get", "secrets", TENANT)
    assert not _can(controlplane, NS_SA_USER, "patch", "finetunejobs.peft.dev", TENANT)
    assert _can(controlplane, NS_SA_USER, "update", "leases.coordination.k8s.io", NS_RELEASE_NAMESPACE)
    assert not _can(controlplane, NS_SA_USER, "update", "leases.coordination.k8s.io", NS_WATCHED)


# --------------------------------------------------------------------------- the operator, as the pod runs it


class OperatorPod:
    """`peft-operator <args>` with the Deployment's environment and the ServiceAccount's token: the pod the
    chart describes, minus the container (ports moved to free ones on loopback)."""

    def __init__(self, cp: ControlPlane, objects: list[dict[str, Any]], namespace: str, pod: str, logs: Path):
        container = operator_container(objects)
        env = {name: e["value"] for name, e in env_of(container).items() if "value" in e}
        secret = one(objects, "Secret")
        ref = env_of(container)["PEFT_PROGRESS_KEY"]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"]
        self.progress_port, self.metrics_port = free_port(), free_port()
        env |= {
            "PEFT_PROGRESS_KEY": base64.b64decode(secret["data"][ref["key"]]).decode(),
            "PEFT_PROGRESS_PORT": str(self.progress_port),
            "PEFT_METRICS_PORT": str(self.metrics_port),
        }
        sa = one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
        kubeconfig = cp.service_account_kubeconfig(namespace, sa, create=False)
        env = {**os.environ, **env, "KUBECONFIG": str(kubeconfig)}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        args = container["args"]
        assert container["command"] == ["peft-operator"]
        self.log_path = logs / f"{pod}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "peft_operator.cli", *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
            )

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """The Deployment's probes (progress /healthz) and the metrics endpoint answer."""
        deadline = time.monotonic() + timeout
        for port, path in ((self.progress_port, "/healthz"), (self.metrics_port, "/metrics")):
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
                        assert response.status == 200
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"{path} on {port} never answered:\n{self.log()}") from None
                    time.sleep(0.2)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def pods(controlplane: ControlPlane) -> Iterator[list[OperatorPod]]:
    started: list[OperatorPod] = []
    yield started
    for pod in started:
        pod.kill()  # no graceful shutdown needed between tests (and it takes Kopf seconds)


@pytest.fixture
def logs() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="peft-chart-operator-") as folder:
        yield Path(folder)


def _phase_of_new_finetunejob(cp: ControlPlane, namespace: str, timeout: float) -> str:
    """Apply the quickstart FineTuneJob under a new name and wait until an operator gives it a phase."""
    job = yaml.safe_load(QUICKSTART.read_text())
    job["metadata"] = {"name": f"quickstart-{uuid.uuid4().hex[:8]}", "namespace": namespace}
    api = cp.api_client()
    try:
        create_referenced_secrets(api, namespace, job)  # else the job waits for them (SecretNotFound)
    finally:
        api.close()
    cp.kubectl("apply", "-f", "-", input=json.dumps(job))  # JSON: no YAML 1.1 vs 1.2 ambiguity ("2e-4")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        phase = cp.kubectl("get", "ftj", job["metadata"]["name"], "-n", namespace, "-o", "jsonpath={.status.phase}")
        if phase.stdout:
            if phase.stdout == "Pending":  # the quickstart requests a GPU: the operator created its preflight Job
                cp.kubectl("get", "job", f"{job['metadata']['name']}-preflight", "-n", namespace)
            return phase.stdout
        time.sleep(0.5)
    return ""


def _lease_holder(cp: ControlPlane, namespace: str, name: str) -> str:
    got = cp.kubectl("get", "lease", name, "-n", namespace, "-o", "jsonpath={.spec.holderIdentity}", check=False)
    return got.stdout


def _wait_for(what: str, condition: Any, timeout: float, *pods: OperatorPod) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n" + "\n\n".join(p.log() for p in pods))
        time.sleep(0.3)


def test_operator_works_cluster_wide_with_the_chart_identity(
    controlplane: ControlPlane, installed: list[dict[str, Any]], pods: list[OperatorPod], logs: Path
) -> None:
    pods.append(OperatorPod(controlplane, installed, NAMESPACE, "peft-operator-0", logs))
    pods[0].wait_healthy()
    _wait_for("the Lease", lambda: "Acquired Lease" in pods[0].log(), 30, *pods)
    assert _phase_of_new_finetunejob(controlplane, TENANT, timeout=30) == "Pending", pods[0].log()
    assert "Forbidden" not in pods[0].log() and " 403" not in pods[0].log()


def test_operator_works_namespaced_with_the_chart_identity(
    controlplane: ControlPlane, chart: Any, installed: list[dict[str, Any]], pods: list[OperatorPod], logs: Path
) -> None:
    objects = render(chart, {"watchNamespaces": [NS_WATCHED]}, name=NS_RELEASE, namespace=NS_RELEASE_NAMESPACE)
    # the Secret holds a fresh random key in every render: use the one the cluster has
    secret = one(objects, "Secret")
    secret["data"] = yaml.safe_load(
        controlplane.kubectl(
            "get", "secret", secret["metadata"]["name"], "-n", NS_RELEASE_NAMESPACE, "-o", "jsonpath={.data}"
        ).stdout
    )
    pods.append(OperatorPod(controlplane, objects, NS_RELEASE_NAMESPACE, "peft-ns-0", logs))
    pods[0].wait_healthy()
    _wait_for("the Lease", lambda: "Acquired Lease" in pods[0].log(), 30, *pods)
    assert _lease_holder(controlplane, NS_RELEASE_NAMESPACE, NS_RELEASE)
    assert _phase_of_new_finetunejob(controlplane, NS_WATCHED, timeout=30) == "Pending", pods[0].log()
    assert "Forbidden" not in pods[0].log() and " 403" not in pods[0].log()


def test_two_replicas_elect_one_leader_and_the_other_takes_over(
    controlplane: ControlPlane, installed: list[dict[str, Any]], pods: list[OperatorPod], logs: Path
) -> None:
    lease = env_of(operator_container(installed))["PEFT_LEASE_NAME"]["value"]
    controlplane.kubectl("delete", "lease", lease, "-n", NAMESPACE, "--ignore-not-found")  # earlier tests' holder
    for name in ("peft-operator-a", "peft-operator-b"):
        pods.append(OperatorPod(controlplane, installed, NAMESPACE, name, logs))
    for pod in pods:
        pod.wait_healthy()  # both serve the probes, leader or standby
    _wait_for("a leader", lambda: any("Acquired Lease" in p.log() for p in pods), 30, *pods)
    assert _phase_of_new_finetunejob(controlplane, TENANT, timeout=30) == "Pending"
    leaders = [p for p in pods if "Acquired Lease" in p.log()]
    assert len(leaders) == 1, "\n\n".join(p.log() for p in pods)
    standby = next(p for p in pods if p is not leaders[0])
    assert "Created Job" not in standby.log()

    holder = _lease_holder(controlplane, NAMESPACE, lease)
    leaders[0].kill()  # as when its node dies: no hand-over
    _wait_for("the standby to take over", lambda: "Acquired Lease" in standby.log(), 60, *pods)
    assert _lease_holder(controlplane, NAMESPACE, lease) not in ("", holder)
    assert _phase_of_new_finetunejob(controlplane, TENANT, timeout=30) == "Pending", standby.log()
