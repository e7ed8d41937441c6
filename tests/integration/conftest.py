"""Fixtures for the integration tests: a real kube-apiserver + etcd on loopback.

- ``controlplane`` (session): etcd + kube-apiserver, admin kubeconfig, see
  :class:`tests.support.controlplane.ControlPlane`.
- ``controller_manager`` (session, opt-in): also runs kube-controller-manager
  (garbage collector, Job, Deployment, ReplicaSet, namespace controllers...).
  Once a test has asked for it, it keeps running for the rest of the session.
- ``crds_installed`` (session): ``crds/*.yaml`` applied and Established.
- ``namespace``: a fresh namespace per test.

Binaries come from ``make controlplane`` (built automatically when a Go
toolchain is present). When they are missing or the start fails, the tests
FAIL if ``$CI`` is set; elsewhere, with no Go toolchain and no binaries, they
skip with a message saying to run ``make controlplane``.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.controlplane import REPO_ROOT, BinariesMissing, ControlPlane, ControlPlaneError
from tests.support.operator_process import OperatorProcess, operator_kubeconfig

CRD_DIR = REPO_ROOT / "crds"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def controlplane() -> Iterator[ControlPlane]:
    cp = ControlPlane()
    try:
        cp.start()
    except BinariesMissing as e:
        if _in_ci():
            pytest.fail(f"CI is set and the control plane cannot run: {e}", pytrace=False)
        pytest.skip(str(e))
    except ControlPlaneError as e:
        pytest.fail(f"control plane failed to start: {e}", pytrace=False)
    print(
        f"\ncontrol plane up in {cp.startup_seconds:.1f}s at {cp.server} (workdir {cp.workdir})",
        file=sys.stderr,
    )
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def controller_manager(controlplane: ControlPlane) -> ControlPlane:
    """The control plane with kube-controller-manager running (GC, Jobs, Deployments...)."""
    try:
        controlplane.start_controller_manager()
    except ControlPlaneError as e:
        pytest.fail(f"kube-controller-manager failed to start: {e}", pytrace=False)
    return controlplane


def crd_files() -> list[Path]:
    return sorted(CRD_DIR.glob("*.yaml"))


@pytest.fixture(scope="session")
def crds_installed(controlplane: ControlPlane) -> list[str]:
    """Apply ``crds/*.yaml`` (server-side) and wait until every CRD is Established.

    Returns the CRD names.
    """
    import yaml

    files = crd_files()
    if not files:
        pytest.fail(f"no CRDs found in {CRD_DIR} (run `make crds`)", pytrace=False)
    names: list[str] = []
    for f in files:
        for doc in yaml.safe_load_all(f.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                names.append(doc["metadata"]["name"])
    controlplane.kubectl("apply", "--server-side", "--field-manager=peft-tests", *(f"--filename={f}" for f in files))
    controlplane.kubectl("wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}" for n in names))
    return names


@pytest.fixture(scope="module")
def operator(
    controller_manager: ControlPlane,
    crds_installed: list[str],
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[OperatorProcess]:
    """The operator as a real process, one per test module, with exactly the chart's RBAC rules (a role
    named after the module)."""
    module = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_").replace("_", "-")
    kubeconfig = operator_kubeconfig(controller_manager, role=f"peft-operator-{module}")
    process = OperatorProcess(kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log").start()
    yield process
    process.stop()
    print(f"\n--- operator log tail ---\n{process.log_tail(40)}")


@pytest.fixture
def admin(controlplane: ControlPlane) -> Iterator[Any]:
    """An admin ``kubernetes.client.ApiClient``."""
    api = controlplane.api_client()
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
def namespace(controlplane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test (deleted afterwards; without the controller
    manager it stays Terminating, which is harmless)."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    name = f"{base}-{uuid.uuid4().hex[:6]}"
    controlplane.ensure_namespace(name)
    yield name
    controlplane.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


_SHOWN_LOGS: set[str] = set()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On a failing test that used the control plane, attach the components' log tails."""
    rep = yield
    key = repr(call.excinfo.value) if call.excinfo else item.nodeid
    if rep.failed and call.when in ("setup", "call") and key not in _SHOWN_LOGS:
        # a failing session fixture fails every test that uses it: show the logs once
        _SHOWN_LOGS.add(key)
        cp = getattr(item, "funcargs", {}).get("controlplane")
        if cp is None:
            for v in getattr(item, "funcargs", {}).values():
                if isinstance(v, ControlPlane):
                    cp = v
        if isinstance(cp, ControlPlane) and cp.workdir is not None:
            cp.failed = True  # keep the logs on disk too
            rep.sections.append(("control plane logs (tail)", cp.logs(lines=30)))
    return rep
