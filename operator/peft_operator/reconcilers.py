"""The two reconcile entry points every trigger uses (Kopf handlers and the resync loop): one pass at a
time per object, counted in metrics, with API trouble mapped to retry-or-give-up. `CONTROLLERS` pairs
each kind with its entry point and the re-check its controller asks for."""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes.client import ApiClient, ApiException
from urllib3.exceptions import HTTPError

from . import metrics
from .adapterattachment import reconcile as adapterattachment_controller
from .adapterdeployment import reconcile as adapterdeployment_controller
from .adapterdeployment import target
from .api import AdapterAttachment, AdapterDeployment, FineTuneJob
from .finetunejob import reconcile as finetunejob_controller
from .settings import OperatorSettings

log = logging.getLogger(__name__)

# Events of several objects (a job, its pods) and the resync loop may name the same object at once.
_locks: defaultdict[tuple[str, str, str], threading.Lock] = defaultdict(threading.Lock)
# Passes asked for but not started yet. A pass reads everything afresh when it starts, so a trigger that finds
# one waiting adds nothing: a burst (500 attachments created at once, each asking for its deployment's pass)
# costs the pass that is running and one more, not 500.
_waiting: set[tuple[str, str, str]] = set()
_waiting_lock = threading.Lock()


class RetryLater(Exception):
    """The API server was busy, unreachable, or the object moved on meanwhile (409, 429, 5xx, connection
    refused): try again shortly. Expected during an outage, so it is one log line, never a traceback."""


def _guarded(kind: str, work: Callable[[], Any], namespace: str, name: str) -> Any:
    key = (kind, namespace, name)
    with _waiting_lock:
        if key in _waiting:
            return None  # the waiting pass will see whatever triggered this one
        _waiting.add(key)
    metrics.RECONCILES.labels(kind=kind).inc()
    try:
        with _locks[key]:
            with _waiting_lock:
                _waiting.discard(key)
            return work()
    except ApiException as error:
        if error.status == 404:
            # Deleted while the pass ran (the object, or a child it wrote): nothing is left to reconcile, and
            # the next trigger or the resync starts again from what exists.
            log.info(
                "%s %s/%s: %s %s during the pass; it was deleted meanwhile", kind, namespace, name, 404, error.reason
            )
            return None
        metrics.RECONCILE_ERRORS.labels(kind=kind).inc()
        if error.status in (409, 429) or error.status >= 500:
            raise RetryLater(f"API {error.status} {error.reason}") from error
        raise
    except HTTPError as error:  # connection refused or reset, timeouts: the API server is away
        metrics.RECONCILE_ERRORS.labels(kind=kind).inc()
        raise RetryLater(f"API server unreachable ({type(error).__name__})") from error
    except Exception:
        metrics.RECONCILE_ERRORS.labels(kind=kind).inc()
        raise


def finetunejob(client: ApiClient, settings: OperatorSettings, namespace: str, name: str) -> None:
    def work() -> None:
        phase = finetunejob_controller.reconcile_finetunejob(client, namespace, name, settings)
        metrics.record_finetunejob_phase(namespace, name, phase.value if phase else None)

    _guarded(FineTuneJob.KIND, work, namespace, name)


def adapterdeployment(client: ApiClient, settings: OperatorSettings, namespace: str, name: str) -> None:
    def work() -> None:
        adapterdeployment_controller.reconcile_adapterdeployment(client, namespace, name, settings)

    _guarded(AdapterDeployment.KIND, work, namespace, name)


def adapterattachment(client: ApiClient, settings: OperatorSettings, namespace: str, name: str) -> None:
    """The attachment's own checks only; its AdapterDeployment's pass (run by the handlers) does the rest."""

    def work() -> None:
        adapterattachment_controller.reconcile_adapterattachment(client, namespace, name)

    _guarded(AdapterAttachment.KIND, work, namespace, name)


Reconcile = Callable[[ApiClient, OperatorSettings, str, str], None]
# After a re-check: tidy what objects that are gone left behind (`namespaces`, the objects listed).
Sweep = Callable[[ApiClient, tuple[str, ...], list[dict[str, Any]]], None]


@dataclass(frozen=True)
class Controller:
    """One kind's controller as the resync loop sees it."""

    model: type[FineTuneJob] | type[AdapterDeployment] | type[AdapterAttachment]  # KIND and PLURAL
    reconcile: Reconcile
    resync_seconds: float
    wants_resync: Callable[[dict[str, Any]], bool]
    sweep: Sweep | None = None


CONTROLLERS = (
    Controller(FineTuneJob, finetunejob, finetunejob_controller.RESYNC_SECONDS, finetunejob_controller.wants_resync),
    Controller(
        AdapterDeployment,
        adapterdeployment,
        adapterdeployment_controller.RESYNC_SECONDS,
        adapterdeployment_controller.wants_resync,
        target.release_orphans,
    ),
    Controller(
        AdapterAttachment,
        adapterattachment,
        adapterattachment_controller.RESYNC_SECONDS,
        adapterattachment_controller.wants_resync,
    ),
)
