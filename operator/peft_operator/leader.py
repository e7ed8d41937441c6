"""Leader election on a coordination.k8s.io Lease, so that with several replicas only one acts.

The holder renews the Lease every `renew_seconds`; a Lease not renewed for `duration_seconds` may be
taken over. Optimistic concurrency (resourceVersion) makes a takeover race end with one winner."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes.client import ApiClient, ApiException, CoordinationV1Api

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseConfig:
    namespace: str
    name: str
    identity: str
    duration_seconds: int = 15
    renew_seconds: float = 5.0


def _micro_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_expired(spec: Any, now: datetime) -> bool:
    """Whether the Lease's holder has stopped renewing it (or nobody holds it)."""
    if not spec or not spec.holder_identity or spec.renew_time is None:
        return True
    duration = timedelta(seconds=spec.lease_duration_seconds or 0)
    return bool(spec.renew_time + duration < now)


def try_acquire(client: ApiClient, config: LeaseConfig, now: datetime | None = None) -> bool:
    """Take or renew the Lease; False when another live holder has it or a concurrent writer won."""
    now = now or datetime.now(UTC)
    api = CoordinationV1Api(client)
    stamp = _micro_time(now)
    try:
        lease = api.read_namespaced_lease(config.name, config.namespace)
    except ApiException as error:
        if error.status != 404:
            raise
        body = {
            "metadata": {"name": config.name, "namespace": config.namespace},
            "spec": {
                "holderIdentity": config.identity,
                "leaseDurationSeconds": config.duration_seconds,
                "acquireTime": stamp,
                "renewTime": stamp,
                "leaseTransitions": 0,
            },
        }
        try:
            api.create_namespaced_lease(config.namespace, body)
            return True
        except ApiException as create_error:
            if create_error.status == 409:
                return False
            raise
    spec = lease.spec
    ours = spec is not None and spec.holder_identity == config.identity
    if not ours and not lease_expired(spec, now):
        return False
    transitions = (spec.lease_transitions or 0) if spec else 0
    body = {
        "metadata": {
            "name": config.name,
            "namespace": config.namespace,
            "resourceVersion": lease.metadata.resource_version,
        },
        "spec": {
            "holderIdentity": config.identity,
            "leaseDurationSeconds": config.duration_seconds,
            "acquireTime": _micro_time(spec.acquire_time) if ours and spec.acquire_time else stamp,
            "renewTime": stamp,
            "leaseTransitions": transitions if ours else transitions + 1,
        },
    }
    try:
        api.replace_namespaced_lease(config.name, config.namespace, body)
    except ApiException as error:
        if error.status == 409:
            return False
        raise
    if not ours:
        log.info("Took over Lease %s/%s as %s", config.namespace, config.name, config.identity)
    return True


def release(client: ApiClient, config: LeaseConfig) -> None:
    """Give the Lease up on a clean shutdown, so a standby takes over at once instead of after it expires."""
    api = CoordinationV1Api(client)
    try:
        lease = api.read_namespaced_lease(config.name, config.namespace)
        if lease.spec is None or lease.spec.holder_identity != config.identity:
            return
        lease.spec.holder_identity = None
        api.replace_namespaced_lease(config.name, config.namespace, lease)
        log.info("Released Lease %s/%s", config.namespace, config.name)
    except ApiException as error:  # the Lease expires by itself anyway
        log.warning("Could not release Lease %s/%s: %s", config.namespace, config.name, error.reason)
