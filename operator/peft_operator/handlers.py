"""Every Kopf handler of the operator, registered in one place. Each is a shim: it names the object
and calls its reconciler; `memo` carries the API client and settings.

No Kopf timers: they make Kopf put a finalizer on every object, which blocks deletion whenever the
operator is down. Periodic re-checks run in `resync.py` instead."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from . import metrics, reconcilers
from .api import GROUP, VERSION, AdapterAttachment, AdapterDeployment, FineTuneJob
from .naming import LABEL_ADAPTERDEPLOYMENT, LABEL_FINETUNEJOB

log = logging.getLogger(__name__)


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


def _run(reconcile: Any, memo: Any, namespace: str | None, name: str) -> None:
    assert namespace is not None, "peft.dev objects are namespaced"
    try:
        reconcile(memo.api_client, memo.settings, namespace, name)
    except reconcilers.RetryLater as error:
        raise kopf.TemporaryError(f"{error}; retrying", delay=2) from error


def _run_for_event(reconcile: Any, memo: Any, namespace: str | None, name: str) -> None:
    """Event handlers are not retried by Kopf; the resync loop catches up with what is deferred here."""
    try:
        _run(reconcile, memo, namespace, name)
    except kopf.TemporaryError as error:
        log.info("Deferred %s/%s: %s", namespace, name, error)


@kopf.on.create(GROUP, VERSION, FineTuneJob.PLURAL)
@kopf.on.resume(GROUP, VERSION, FineTuneJob.PLURAL)
@kopf.on.update(GROUP, VERSION, FineTuneJob.PLURAL, field="metadata.annotations")
def finetunejob_changed(namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    _run(reconcilers.finetunejob, memo, namespace, name)


@kopf.on.delete(GROUP, VERSION, FineTuneJob.PLURAL, optional=True)  # optional: no finalizer
def finetunejob_deleted(namespace: str | None, name: str, **_: Any) -> None:
    metrics.record_finetunejob_phase(namespace or "", name, None)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_FINETUNEJOB: kopf.PRESENT})
@kopf.on.event("", "v1", "pods", labels={LABEL_FINETUNEJOB: kopf.PRESENT})
def training_workload_changed(namespace: str | None, labels: Mapping[str, str], memo: Any, **_: Any) -> None:
    _run_for_event(reconcilers.finetunejob, memo, namespace, labels[LABEL_FINETUNEJOB])


@kopf.on.create(GROUP, VERSION, AdapterDeployment.PLURAL)
@kopf.on.resume(GROUP, VERSION, AdapterDeployment.PLURAL)
@kopf.on.update(GROUP, VERSION, AdapterDeployment.PLURAL, field="spec")
def adapterdeployment_changed(namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    _run(reconcilers.adapterdeployment, memo, namespace, name)


@kopf.on.event("", "v1", "pods", labels={LABEL_ADAPTERDEPLOYMENT: kopf.PRESENT})
def engine_pod_changed(namespace: str | None, labels: Mapping[str, str], memo: Any, **_: Any) -> None:
    _run_for_event(reconcilers.adapterdeployment, memo, namespace, labels[LABEL_ADAPTERDEPLOYMENT])


@kopf.on.create(GROUP, VERSION, AdapterAttachment.PLURAL)
@kopf.on.resume(GROUP, VERSION, AdapterAttachment.PLURAL)
@kopf.on.update(GROUP, VERSION, AdapterAttachment.PLURAL, field="spec")
def adapterattachment_changed(namespace: str | None, name: str, spec: Mapping[str, Any], memo: Any, **_: Any) -> None:
    """An attachment came or changed: its own checks, then its AdapterDeployment's pass (which accepts and
    loads it, or refuses it, and reports back)."""
    _run(reconcilers.adapterattachment, memo, namespace, name)
    ref = spec.get("adapterDeploymentRef") or {}
    if ref.get("namespace") and ref.get("name"):
        _run(reconcilers.adapterdeployment, memo, ref["namespace"], ref["name"])


@kopf.on.event(GROUP, VERSION, AdapterAttachment.PLURAL)
def adapterattachment_event(
    type: str | None, namespace: str | None, name: str, spec: Mapping[str, Any], memo: Any, **_: Any
) -> None:
    """Gone (it has no finalizer, so no on.delete handler runs): its AdapterDeployment's pass unloads it now
    rather than at the next re-check, which still catches a deletion the operator missed while down."""
    ref = spec.get("adapterDeploymentRef") or {}
    if type == "DELETED" and ref.get("namespace") and ref.get("name"):
        log.info(
            "AdapterAttachment %s/%s was deleted: syncing AdapterDeployment %s/%s",
            namespace,
            name,
            ref["namespace"],
            ref["name"],
        )
        _run_for_event(reconcilers.adapterdeployment, memo, ref["namespace"], ref["name"])
