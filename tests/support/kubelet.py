"""Stand-in for the kubelet: there is no node, so tests move pod status as a kubelet would."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from kubernetes.client import ApiClient, CoreV1Api

T = TypeVar("T")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.25) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def pods_of(client: ApiClient, namespace: str, selector: str) -> list[Any]:
    return list(CoreV1Api(client).list_namespaced_pod(namespace, label_selector=selector).items)


def _container_status(name: str, state: dict[str, Any], ready: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "image": "registry.test/peft-runtime:test",
        "imageID": "",
        "ready": ready,
        "restartCount": 0,
        "started": "running" in state,
        "state": state,
    }


def _patch(client: ApiClient, pod: Any, status: dict[str, Any]) -> None:
    # The client would send a dict as a JSON patch; a kubelet sends a strategic merge patch.
    CoreV1Api(client).patch_namespaced_pod_status(
        pod.metadata.name,
        pod.metadata.namespace,
        {"status": status},
        _content_type="application/strategic-merge-patch+json",
    )


def set_running(client: ApiClient, pod: Any, container: str = "trainer") -> None:
    _patch(
        client,
        pod,
        {
            "phase": "Running",
            "startTime": now(),
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now()}],
            "containerStatuses": [_container_status(container, {"running": {"startedAt": now()}}, ready=True)],
        },
    )


def set_waiting(client: ApiClient, pod: Any, reason: str, message: str, container: str = "trainer") -> None:
    _patch(
        client,
        pod,
        {
            "phase": "Pending",
            "containerStatuses": [_container_status(container, {"waiting": {"reason": reason, "message": message}})],
        },
    )


def set_terminated(
    client: ApiClient,
    pod: Any,
    exit_code: int,
    reason: str,
    message: str = "",
    container: str = "trainer",
) -> None:
    state = {
        "terminated": {
            "exitCode": exit_code,
            "reason": reason,
            "message": message,
            "startedAt": now(),
            "finishedAt": now(),
        }
    }
    _patch(
        client,
        pod,
        {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": now()}],
            "containerStatuses": [_container_status(container, state)],
        },
    )
