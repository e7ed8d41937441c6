"""Kubernetes Events (core/v1, what `kubectl describe` shows) that both controllers post on their objects.

Not the trainer's events: those are a wire contract in `api/events.py`. The status functions decide which
Events a pass owes (pure, `KubeEvent`); the reconcilers post them here before they write the status."""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes.client import ApiClient, ApiException, CoreV1Api

from .api import GROUP
from .kube import FIELD_MANAGER

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KubeEvent:
    """One Event to post on an object."""

    type: str  # Normal or Warning
    reason: str
    message: str


def render_event(involved: dict[str, Any], event: KubeEvent) -> dict[str, Any]:
    """The core/v1 Event for `event` on the object `involved` (a body as read from the API)."""
    meta = involved["metadata"]
    now = datetime.now(UTC).isoformat()
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": involved["apiVersion"],
            "kind": involved["kind"],
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "type": event.type,
        "reason": event.reason,
        "message": event.message[:1024],
        "source": {"component": FIELD_MANAGER},
        "reportingComponent": f"{GROUP}/operator",
        "reportingInstance": socket.gethostname()[:128],
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


def post_event(client: ApiClient, involved: dict[str, Any], event: KubeEvent) -> None:
    """Record `event` on `involved`; a refused Event is a log line, never a failed reconcile."""
    meta = involved["metadata"]
    try:
        CoreV1Api(client).create_namespaced_event(meta["namespace"], render_event(involved, event))
    except ApiException as error:
        log.warning("Could not post Event %s on %s/%s: %s", event.reason, meta["namespace"], meta["name"], error.reason)
