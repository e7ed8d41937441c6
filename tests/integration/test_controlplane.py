"""Integration: the control plane is a real kube-apiserver + etcd (+ controller manager).

CRDs install and become Established; every example applies (kubectl server-side
apply and the Python client); every broken example is rejected by the apiserver
with 422 naming the field (or, for ``# layer: operator`` files, accepted: only
the operator catches those); status and spec are isolated by the status
subresource; watches deliver ADDED/MODIFIED/DELETED with growing
resourceVersions; RBAC gives 403 without a binding and 200 with one; and the
controller manager's garbage collector and Deployment/ReplicaSet controllers
act.
"""

from __future__ import annotations

import json
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests.support.controlplane import ControlPlane

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
BROKEN = sorted((REPO / "examples" / "broken").glob("*.yaml"))
GROUP, VERSION = "peft.dev", "v1alpha1"
T = TypeVar("T")


def _plurals() -> dict[str, str]:
    """kind -> plural, from the CRDs in crds/."""
    out = {}
    for f in sorted((REPO / "crds").glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                out[doc["spec"]["names"]["kind"]] = doc["spec"]["names"]["plural"]
    return out


PLURALS = _plurals()


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _comment(path: Path, key: str) -> str | None:
    m = re.search(rf"^#\s*{key}:\s*(.+?)\s*$", path.read_text(), re.MULTILINE)
    return m.group(1) if m else None


def _eventually(fn: Callable[[], T], timeout: float = 30.0, interval: float = 0.2) -> T:
    """Call ``fn`` until it returns a truthy value without raising; return that value."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = fn()
            if value:
                return value
        except Exception as e:
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout}s (last error: {last!r})")
        time.sleep(interval)


@pytest.fixture
def custom(admin: Any) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(admin)


@pytest.fixture
def namespace2(controlplane: ControlPlane, namespace: str) -> Iterator[str]:
    name = f"{namespace[:55]}-py"
    controlplane.ensure_namespace(name)
    yield name
    controlplane.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _create(custom: Any, namespace: str, doc: dict[str, Any]) -> dict[str, Any]:
    return custom.create_namespaced_custom_object(  # type: ignore[no-any-return]
        GROUP, VERSION, namespace, PLURALS[doc["kind"]], doc
    )


def _example(kind: str) -> dict[str, Any]:
    for f in EXAMPLES:
        for doc in _docs(f):
            if doc["kind"] == kind:
                return doc
    raise AssertionError(f"no {kind} in examples/")


# ------------------------------------------------------------------ the apiserver itself


def test_versions_match_the_pinned_release(controlplane: ControlPlane) -> None:
    gomod = (REPO / "tests" / "controlplane" / "go.mod").read_text()
    pinned = re.search(r"^\s*k8s\.io/kubernetes (v\S+)", gomod, re.MULTILINE)
    assert pinned
    out = json.loads(controlplane.kubectl("version", "--output=json").stdout)
    assert out["serverVersion"]["gitVersion"] == pinned.group(1)
    assert out["clientVersion"]["gitVersion"] == pinned.group(1)
    assert "versionSkewWarning" not in out


def test_start_stop_leaves_no_processes(controlplane: ControlPlane) -> None:
    import os

    cp = ControlPlane(bin_dir=controlplane.bin_dir, build=False)
    cp.start()
    try:
        assert cp.startup_seconds is not None and cp.startup_seconds < 60
        pids = [p.popen.pid for p in cp._procs.values()]
        workdir = cp.workdir
        assert cp.kubectl("get", "--raw=/readyz").stdout.strip() == "ok"
    finally:
        cp.stop()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert workdir is not None and not workdir.exists()


# ------------------------------------------------------------------ CRDs and examples


def test_crds_are_established(controlplane: ControlPlane, crds_installed: list[str]) -> None:
    assert set(crds_installed) == {
        "finetunejobs.peft.dev",
        "adapterdeployments.peft.dev",
        "adapterattachments.peft.dev",
    }
    for name in crds_installed:
        crd = json.loads(controlplane.kubectl("get", f"crd/{name}", "-o", "json").stdout)
        conds = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conds.get("Established") == "True", conds
        assert conds.get("NamesAccepted") == "True", conds
    resources = controlplane.kubectl("api-resources", f"--api-group={GROUP}", "-o", "wide").stdout
    assert "ftj" in resources and "adep" in resources and "adat" in resources


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_applies(
    path: Path,
    controlplane: ControlPlane,
    crds_installed: list[str],
    custom: Any,
    namespace: str,
    namespace2: str,
) -> None:
    # 1. kubectl server-side apply, into one namespace
    out = controlplane.kubectl(
        "apply", "--server-side", "--field-manager=peft-tests", "-n", namespace, "-f", str(path)
    ).stdout
    assert "serverside-applied" in out, out
    # 2. the Python client, into another
    for doc in _docs(path):
        created = _create(custom, namespace2, doc)
        assert created["metadata"]["namespace"] == namespace2
        via_kubectl = custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURALS[doc["kind"]], doc["metadata"]["name"]
        )
        assert created["spec"] == via_kubectl["spec"]
        assert created["metadata"]["generation"] == 1


@pytest.mark.parametrize("path", BROKEN, ids=[p.name for p in BROKEN])
def test_broken_example_is_judged_by_the_apiserver(
    path: Path, crds_installed: list[str], custom: Any, namespace: str
) -> None:
    from kubernetes.client.rest import ApiException

    layer, field = _comment(path, "layer"), _comment(path, "field")
    assert layer in ("schema", "operator"), f"{path.name}: needs a '# layer: schema|operator' line"
    assert field, f"{path.name}: needs a '# field: <path>' line"
    (doc,) = _docs(path)
    if layer == "operator":
        # Well-formed for the schema: only the operator's validation refuses it.
        created = _create(custom, namespace, doc)
        assert created["metadata"]["uid"]
        return
    with pytest.raises(ApiException) as info:
        _create(custom, namespace, doc)
    assert info.value.status == 422, info.value.body
    status = json.loads(info.value.body)
    fields = [c.get("field", "") for c in status.get("details", {}).get("causes", [])]
    assert field in status["message"] or field in fields, (field, status["message"], fields)


# ------------------------------------------------------------------ status subresource, CEL


def test_status_subresource_isolates_spec_and_status(crds_installed: list[str], custom: Any, namespace: str) -> None:
    from kubernetes.client.rest import ApiException

    ftj = _example("FineTuneJob")
    plural = PLURALS["FineTuneJob"]
    name = ftj["metadata"]["name"]
    _create(custom, namespace, {**ftj, "status": {"phase": "Running"}})
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
    assert "status" not in obj or "phase" not in obj["status"], "status accepted on create"

    # the main resource ignores status...
    obj["status"] = {"phase": "Succeeded"}
    obj["metadata"].setdefault("labels", {})["touched"] = "yes"
    obj = custom.replace_namespaced_custom_object(GROUP, VERSION, namespace, plural, name, obj)
    assert obj["metadata"]["labels"]["touched"] == "yes"
    assert "phase" not in obj.get("status", {})

    # ...the status subresource ignores spec (and metadata other than resourceVersion)...
    before = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
    changed = json.loads(json.dumps(before))
    changed["spec"]["training"]["learningRate"] = "1e-3"
    changed["status"] = {"phase": "Running", "attempts": 1}
    after = custom.replace_namespaced_custom_object_status(GROUP, VERSION, namespace, plural, name, changed)
    assert after["status"] == {"phase": "Running", "attempts": 1}
    assert after["spec"] == before["spec"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"]

    # ...and the status is validated by the schema (enum)...
    with pytest.raises(ApiException) as info:
        custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, plural, name, {"status": {"phase": "Exploded"}}
        )
    assert info.value.status == 422 and "status.phase" in info.value.body

    # ...and the spec is immutable (CEL transition rule self == oldSelf).
    with pytest.raises(ApiException) as info:
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, name, {"spec": {"training": {"learningRate": "1e-3"}}}
        )
    assert info.value.status == 422 and "immutable" in info.value.body


def test_spec_change_bumps_generation_not_status(crds_installed: list[str], custom: Any, namespace: str) -> None:
    adep = _example("AdapterDeployment")
    plural = PLURALS["AdapterDeployment"]
    name = adep["metadata"]["name"]
    _create(custom, namespace, adep)
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, plural, name, {"status": {"replicas": 2}})
    obj = custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        plural,
        name,
        {"spec": {"adapters": adep["spec"]["adapters"][:1]}, "status": {"replicas": 99}},
    )
    assert obj["metadata"]["generation"] == 2
    assert len(obj["spec"]["adapters"]) == 1
    assert obj["status"]["replicas"] == 2


# ------------------------------------------------------------------ watches


def test_watch_sees_added_modified_deleted(crds_installed: list[str], custom: Any, namespace: str) -> None:
    from kubernetes import watch

    ftj = _example("FineTuneJob")
    plural = PLURALS["FineTuneJob"]
    name = ftj["metadata"]["name"]
    listed = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)
    events: queue.Queue[tuple[str, str, str]] = queue.Queue()
    w = watch.Watch()

    def pump() -> None:
        for ev in w.stream(
            custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            plural,
            resource_version=listed["metadata"]["resourceVersion"],
            timeout_seconds=60,
        ):
            obj = ev["object"]
            events.put((ev["type"], obj["metadata"]["name"], obj["metadata"]["resourceVersion"]))
            if ev["type"] == "DELETED":
                return

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    _create(custom, namespace, ftj)
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, plural, name, {"metadata": {"labels": {"seen": "yes"}}}
    )
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
    got = [events.get(timeout=30) for _ in range(3)]
    w.stop()
    assert [(typ, n) for typ, n, _ in got] == [
        ("ADDED", name),
        ("MODIFIED", name),
        ("DELETED", name),
    ]
    rvs = [int(rv) for _, _, rv in got]
    assert rvs == sorted(rvs) and len(set(rvs)) == 3, rvs
    assert rvs[0] > int(listed["metadata"]["resourceVersion"])


# ------------------------------------------------------------------ RBAC


def _status_of(call: Callable[[], Any]) -> int:
    from kubernetes.client.rest import ApiException

    try:
        call()
    except ApiException as e:
        return int(e.status)
    return 200


def test_rbac_user_needs_a_binding(controlplane: ControlPlane, namespace: str) -> None:
    from kubernetes import client

    kubeconfig = controlplane.mint_user_kubeconfig("alice", groups=["tenant-a"])
    with controlplane.api_client(kubeconfig) as api, controlplane.api_client() as admin:
        core = client.CoreV1Api(api)
        assert _status_of(lambda: core.list_namespaced_config_map(namespace)) == 403
        rbac = client.RbacAuthorizationV1Api(admin)
        rbac.create_namespaced_role(
            namespace,
            {
                "metadata": {"name": "cm-reader"},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
            },
        )
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": "alice-cm-reader"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm-reader"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}],
            },
        )
        _eventually(lambda: _status_of(lambda: core.list_namespaced_config_map(namespace)) == 200)
        # exactly what the Role grants: no writes, no other namespace
        assert _status_of(lambda: core.create_namespaced_config_map(namespace, {"metadata": {"name": "x"}})) == 403
        assert _status_of(lambda: core.list_namespaced_config_map("default")) == 403
    # kubectl with the minted kubeconfig agrees
    out = controlplane.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig).stdout
    info = json.loads(out)["status"]["userInfo"]
    assert info["username"] == "alice" and "tenant-a" in info["groups"]


def test_rbac_service_account_token_and_cluster_role(
    controlplane: ControlPlane, crds_installed: list[str], namespace: str
) -> None:
    from kubernetes import client

    kubeconfig = controlplane.service_account_kubeconfig(namespace, "robot")
    with controlplane.api_client(kubeconfig) as api, controlplane.api_client() as admin:
        custom = client.CustomObjectsApi(api)

        def list_ftj() -> Any:
            return custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs")

        assert _status_of(list_ftj) == 403
        rbac = client.RbacAuthorizationV1Api(admin)
        rbac.create_cluster_role(
            {
                "metadata": {"name": f"{namespace}-ftj-reader"},
                "rules": [{"apiGroups": [GROUP], "resources": ["finetunejobs"], "verbs": ["get", "list", "watch"]}],
            }
        )
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": "robot-ftj-reader"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": f"{namespace}-ftj-reader",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "robot", "namespace": namespace}],
            },
        )
        _eventually(lambda: _status_of(list_ftj) == 200)
        assert (
            _status_of(lambda: custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "adapterdeployments"))
            == 403
        )
    out = controlplane.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig).stdout
    assert json.loads(out)["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:robot"


# ------------------------------------------------------------------ controller manager (last: it stays on)


def test_controller_manager_collects_garbage_and_runs_deployments(
    controller_manager: ControlPlane, crds_installed: list[str], custom: Any, namespace: str
) -> None:
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    with controller_manager.api_client() as api:
        core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
        # garbage collection of a dependent of a custom resource
        owner = _create(custom, namespace, _example("FineTuneJob"))
        core.create_namespaced_config_map(
            namespace,
            {
                "metadata": {
                    "name": "plan",
                    "ownerReferences": [
                        {
                            "apiVersion": f"{GROUP}/{VERSION}",
                            "kind": "FineTuneJob",
                            "name": owner["metadata"]["name"],
                            "uid": owner["metadata"]["uid"],
                            "controller": True,
                            "blockOwnerDeletion": True,
                        }
                    ],
                },
                "data": {"plan.json": "{}"},
            },
        )
        custom.delete_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURALS["FineTuneJob"], owner["metadata"]["name"]
        )

        def plan_gone() -> bool:
            try:
                core.read_namespaced_config_map("plan", namespace)
            except ApiException as e:
                return bool(e.status == 404)
            return False

        _eventually(plan_gone, timeout=60)

        # Deployment -> ReplicaSet -> Pods (no kubelet: the pods stay Pending)
        apps.create_namespaced_deployment(
            namespace,
            {
                "metadata": {"name": "web"},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "web", "image": "example.invalid/web:1"}]},
                    },
                },
            },
        )
        _eventually(lambda: len(apps.list_namespaced_replica_set(namespace).items) == 1, timeout=60)
        _eventually(
            lambda: len(core.list_namespaced_pod(namespace, label_selector="app=web").items) == 2,
            timeout=60,
        )
