"""Every Kopf handler of the operator, registered in one place. Each is a shim: it names the object
and calls the reconciler, which does the work; `memo` carries the API client and settings."""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import kopf
from kubernetes.client import ApiException

from . import metrics
from .adapterdeployment.reconcile import reconcile_adapterdeployment
from .api import GROUP, VERSION
from .finetunejob.reconcile import needs_deploy, reconcile_finetunejob
from .finetunejob.status import TERMINAL_PHASES
from .kube import OwnershipConflictError
from .naming import LABEL_ADAPTERDEPLOYMENT, LABEL_FINETUNEJOB

log = logging.getLogger(__name__)
RESYNC_SECONDS = 30.0
# Engines that lost adapters (restart, eviction) get them back within this many seconds.
ADAPTER_RECHECK_SECONDS = 10.0
# Pod events and timers for one object may arrive on different workers: one reconcile at a time each.
_locks: defaultdict[tuple[str, str, str], threading.Lock] = defaultdict(threading.Lock)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Handler progress in annotations: the typed status schema has no room for Kopf's bookkeeping.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="peft.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="peft.dev", key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # our own Events say what happened; Kopf's only on trouble
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.error_backoffs = [1, 2, 5, 10, 30]


def _guarded(kind: str, reconcile: Any, memo: Any, namespace: str | None, name: str) -> None:
    """Run one reconcile under the object's lock, mapping API trouble to Kopf's retry semantics."""
    assert namespace is not None, f"{kind}s are namespaced"
    metrics.RECONCILES.labels(kind=kind).inc()
    try:
        with _locks[(kind, namespace, name)]:
            reconcile(memo.api_client, namespace, name, memo.settings)
    except OwnershipConflictError as error:
        metrics.RECONCILE_ERRORS.labels(kind=kind).inc()
        raise kopf.PermanentError(str(error)) from error
    except ApiException as error:
        metrics.RECONCILE_ERRORS.labels(kind=kind).inc()
        if error.status in (409, 429) or error.status >= 500:
            raise kopf.TemporaryError(f"API {error.status} {error.reason}; retrying", delay=2) from error
        raise
    except Exception:
        metrics.RECONCILE_ERRORS.labels(kind=kind).inc()
        raise


def _reconcile_finetunejob(memo: Any, namespace: str | None, name: str) -> None:
    def reconcile_and_count(client: Any, namespace: str, name: str, settings: Any) -> None:
        phase = reconcile_finetunejob(client, namespace, name, settings)
        metrics.record_finetunejob_phase(namespace, name, phase.value if phase else None)

    _guarded("FineTuneJob", reconcile_and_count, memo, namespace, name)


def _reconcile_adapterdeployment(memo: Any, namespace: str | None, name: str) -> None:
    _guarded("AdapterDeployment", reconcile_adapterdeployment, memo, namespace, name)


@kopf.on.create(GROUP, VERSION, "finetunejobs")
@kopf.on.resume(GROUP, VERSION, "finetunejobs")
@kopf.on.update(GROUP, VERSION, "finetunejobs", field="metadata.annotations")
def finetunejob_changed(namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    _reconcile_finetunejob(memo, namespace, name)


def _unfinished(body: kopf.Body, **_: Any) -> bool:
    phase = (body.get("status") or {}).get("phase")
    return phase not in {p.value for p in TERMINAL_PHASES} or needs_deploy(dict(body))


@kopf.timer(GROUP, VERSION, "finetunejobs", interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS, when=_unfinished)
def finetunejob_resync(namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    _reconcile_finetunejob(memo, namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_FINETUNEJOB: kopf.PRESENT})
@kopf.on.event("", "v1", "pods", labels={LABEL_FINETUNEJOB: kopf.PRESENT})
def training_workload_changed(namespace: str | None, labels: Mapping[str, str], memo: Any, **_: Any) -> None:
    try:
        _reconcile_finetunejob(memo, namespace, labels[LABEL_FINETUNEJOB])
    except kopf.TemporaryError as error:  # event handlers are not retried; the resync timer catches up
        log.info("Deferred FineTuneJob %s/%s: %s", namespace, labels[LABEL_FINETUNEJOB], error)


@kopf.on.create(GROUP, VERSION, "adapterdeployments")
@kopf.on.resume(GROUP, VERSION, "adapterdeployments")
@kopf.on.update(GROUP, VERSION, "adapterdeployments", field="spec")
def adapterdeployment_changed(namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    _reconcile_adapterdeployment(memo, namespace, name)


@kopf.timer(
    GROUP, VERSION, "adapterdeployments", interval=ADAPTER_RECHECK_SECONDS, initial_delay=ADAPTER_RECHECK_SECONDS
)
def adapterdeployment_recheck(namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    _reconcile_adapterdeployment(memo, namespace, name)


@kopf.on.event("", "v1", "pods", labels={LABEL_ADAPTERDEPLOYMENT: kopf.PRESENT})
def engine_pod_changed(namespace: str | None, labels: Mapping[str, str], memo: Any, **_: Any) -> None:
    try:
        _reconcile_adapterdeployment(memo, namespace, labels[LABEL_ADAPTERDEPLOYMENT])
    except kopf.TemporaryError as error:  # the recheck timer catches up
        log.info("Deferred AdapterDeployment %s/%s: %s", namespace, labels[LABEL_ADAPTERDEPLOYMENT], error)


@kopf.on.delete(GROUP, VERSION, "finetunejobs", optional=True)
def finetunejob_deleted(namespace: str | None, name: str, **_: Any) -> None:
    metrics.record_finetunejob_phase(namespace or "", name, None)
