"""An AdapterAttachment's status as a pure function of the deployment's verdict, its resolved source and the
AdapterDeployment's per-adapter status; and the Events a change deserves (posted in the tenant's namespace).

Conditions follow Gateway API: Accepted (the deployment takes it: namespace allowed, under quota, name
free), ResolvedRefs (its FineTuneJob or URI and its Secret resolve), and Ready (loaded on every replica)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ..api import AdapterAttachmentStatus
from ..api.adapterdeployment import AdapterState, AdapterStatus
from ..api.base import SecretRef
from ..conditions import set_condition
from ..events import KubeEvent
from .admission import Verdict
from .sources import REF_NOT_READY, ResolvedSource


@dataclass(frozen=True)
class Serving:
    """What the AdapterDeployment reports for this attachment's served name."""

    endpoint: str | None
    replicas: int
    adapter: AdapterStatus | None  # its entry in the deployment's status.adapters, once it is desired


def _ready(verdict: Verdict, source: ResolvedSource | None, adapter: AdapterStatus | None) -> tuple[bool, str, str]:
    if not verdict.accepted:
        return False, "NotAccepted", verdict.message
    if source is None or not source.resolved:
        return False, "UnresolvedRefs", source.message if source else "The references were not resolved."
    if adapter is None:
        return False, "Pending", "Waiting for the AdapterDeployment to load it."
    if adapter.state is AdapterState.LOADED:
        return True, "Loaded", f"Loaded on {adapter.loaded_replicas} replicas."
    if adapter.state is AdapterState.FAILED:
        return False, "LoadFailed", adapter.message or "The load failed."
    return False, adapter.state.value, adapter.message or ""


def attachment_status(
    current: AdapterAttachmentStatus,
    generation: int | None,
    served_name: str,
    verdict: Verdict,
    source: ResolvedSource | None,
    serving: Serving | None,
    now: datetime,
    api_key_secret: str | None = None,
) -> AdapterAttachmentStatus:
    """`source` None: not evaluated (no such AdapterDeployment, or an invalid spec); `serving` None: likewise.
    `api_key_secret`: the Secret in the tenant's namespace with this adapter's API key, when keys are required."""
    adapter = serving.adapter if serving and verdict.accepted and source and source.resolved else None
    status = current.model_copy(deep=True)
    status.observed_generation = generation
    status.served_name = served_name
    status.endpoint = serving.endpoint if serving else None
    status.replicas = serving.replicas if serving else 0
    status.loaded_replicas = adapter.loaded_replicas if adapter else 0
    status.digest = adapter.digest if adapter else None
    status.state = adapter.state if adapter else AdapterState.PENDING
    status.api_key_secret_ref = SecretRef(name=api_key_secret) if api_key_secret else None
    ready = _ready(verdict, source, adapter)
    status.message = None if ready[0] else ready[2]
    conditions = set_condition(
        status.conditions, "Accepted", verdict.accepted, verdict.reason, verdict.message, generation, now
    )
    if source is None:
        conditions = [c for c in conditions if c.type != "ResolvedRefs"]
    else:
        conditions = set_condition(
            conditions, "ResolvedRefs", source.resolved, source.reason, source.message, generation, now
        )
    status.conditions = set_condition(conditions, "Ready", *ready, generation, now)
    return status


def _reason(status: AdapterAttachmentStatus, type_: str) -> str | None:
    return next((c.reason for c in status.conditions if c.type == type_), None)


def attachment_events(before: AdapterAttachmentStatus, after: AdapterAttachmentStatus) -> list[KubeEvent]:
    """One Event per change a tenant should hear about: accepted or refused, a reference that does not
    resolve, loaded or failed."""
    events: list[KubeEvent] = []
    for type_ in ("Accepted", "ResolvedRefs"):
        condition = next((c for c in after.conditions if c.type == type_), None)
        if condition is None or _reason(before, type_) == condition.reason:
            continue
        good = condition.status.value == "True" or condition.reason == REF_NOT_READY
        if good and type_ == "ResolvedRefs" and condition.status.value == "True":
            continue  # resolving is expected; the load that follows says more
        events.append(KubeEvent("Normal" if good else "Warning", condition.reason, condition.message))
    if after.state != before.state or after.digest != before.digest:
        if after.state is AdapterState.LOADED:
            events.append(
                KubeEvent(
                    "Normal",
                    "AdapterLoaded",
                    f"Serving {after.served_name} on {after.loaded_replicas} replicas at {after.endpoint}.",
                )
            )
        elif after.state is AdapterState.FAILED:
            events.append(KubeEvent("Warning", "AdapterFailed", f"{after.served_name}: {after.message}"))
    return events
