"""AdapterDeployment status as a pure function of the desired adapters and what each pod's agent reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ..api import AdapterDeploymentStatus
from ..api.adapterdeployment import AdapterState, AdapterStatus
from ..conditions import set_condition
from .sources import DesiredAdapter


@dataclass(frozen=True)
class LoadFailure:
    reason: str  # CamelCase, from the agent (ChecksumMismatch, IncompatibleBaseModel, RankTooLarge, ...)
    message: str


@dataclass
class PodReport:
    """One engine pod after this pass: what its engine holds and what failed to load."""

    name: str
    reachable: bool = True
    error: str | None = None
    loaded: dict[str, str] = field(default_factory=dict)  # adapter name -> sha256 the engine serves
    resident: set[str] = field(default_factory=set)  # adapters in the engine's memory (built-in engine)
    failures: dict[str, LoadFailure] = field(default_factory=dict)

    def holds(self, adapter: DesiredAdapter) -> bool:
        return adapter.sha256 is not None and self.loaded.get(adapter.name) == adapter.sha256


MAX_LOAD_ATTEMPTS = 6
MAX_BACKOFF = timedelta(minutes=5)


def may_retry(previous: AdapterStatus | None, digest: str | None, now: datetime) -> bool:
    """Failed loads of the same digest are retried with exponential backoff, at most MAX_LOAD_ATTEMPTS times."""
    if previous is None or previous.state is not AdapterState.FAILED or previous.digest != digest:
        return True
    if previous.failed_attempts >= MAX_LOAD_ATTEMPTS or previous.last_attempt_time is None:
        return previous.failed_attempts < MAX_LOAD_ATTEMPTS
    wait = min(MAX_BACKOFF, timedelta(seconds=5 * 2 ** max(previous.failed_attempts - 1, 0)))
    return now - previous.last_attempt_time >= wait


def pod_is_complete(report: PodReport, desired: list[DesiredAdapter], failed: frozenset[str]) -> bool:
    """The readiness gate: the pod holds every adapter that can be loaded and has not failed to load."""
    if not report.reachable:
        return False
    return all(report.holds(a) for a in desired if a.loadable and a.name not in failed)


def failed_adapters(status: AdapterDeploymentStatus) -> frozenset[str]:
    return frozenset(a.name for a in status.adapters if a.state is AdapterState.FAILED)


def _adapter_status(
    adapter: DesiredAdapter, pods: list[PodReport], previous: AdapterStatus | None, held_back: bool, now: datetime
) -> AdapterStatus:
    holding = [p for p in pods if p.holds(adapter)]
    if held_back and previous is not None:
        return previous.model_copy(update={"loaded_replicas": len(holding)})
    if adapter.refused is not None:
        return AdapterStatus(name=adapter.name, state=AdapterState.FAILED, message=adapter.refused)
    if adapter.waiting is not None:
        return AdapterStatus(name=adapter.name, state=AdapterState.PENDING, message=adapter.waiting)
    failures = [(p.name, p.failures[adapter.name]) for p in pods if adapter.name in p.failures]
    if failures:
        pod, failure = failures[0]
        same = previous is not None and previous.state is AdapterState.FAILED and previous.digest == adapter.sha256
        attempts = (previous.failed_attempts if same and previous else 0) + 1
        give_up = " Gave up retrying: fix the adapter or change its source." if attempts >= MAX_LOAD_ATTEMPTS else ""
        return AdapterStatus(
            name=adapter.name,
            state=AdapterState.FAILED,
            digest=adapter.sha256,
            uri=adapter.uri,
            fine_tune_job=adapter.fine_tune_job,
            loaded_replicas=len(holding),
            message=f"{failure.reason}: {failure.message} (pod {pod}){give_up}",
            failed_attempts=attempts,
            last_attempt_time=now,
        )
    reachable = [p for p in pods if p.reachable]
    state = AdapterState.LOADED if reachable and len(holding) == len(reachable) else AdapterState.LOADING
    loading = f"Loaded on {len(holding)} of {len(reachable)} replicas."
    return AdapterStatus(
        name=adapter.name,
        state=state,
        digest=adapter.sha256,
        uri=adapter.uri,
        fine_tune_job=adapter.fine_tune_job,
        loaded_replicas=len(holding),
        resident_replicas=[p.name for p in holding if adapter.name in p.resident],
        message=adapter.source_gone if state is AdapterState.LOADED else loading,
    )


def compute_status(
    current: AdapterDeploymentStatus,
    desired: list[DesiredAdapter],
    pods: list[PodReport],
    replicas: int,
    generation: int | None,
    endpoint: str | None,
    now: datetime,
    held_back: frozenset[str] = frozenset(),
) -> AdapterDeploymentStatus:
    """`held_back` names failed adapters not retried in this pass (backoff): their status carries over.
    Ready and Degraded judge the deployment's own adapters: an attached one that fails or is still loading is
    listed here but reported to its tenant on the AdapterAttachment, so a tenant never degrades the platform."""
    previous = {a.name: a for a in current.adapters}
    adapters = [_adapter_status(a, pods, previous.get(a.name), a.name in held_back, now) for a in desired]
    failed_anywhere = frozenset(a.name for a in adapters if a.state is AdapterState.FAILED)
    ready_pods = [p for p in pods if pod_is_complete(p, desired, failed_anywhere)]
    attached = {d.name for d in desired if d.attached}
    own = [a for a in adapters if a.name not in attached]
    failed = [a for a in own if a.state is AdapterState.FAILED]
    loaded = sum(a.state is AdapterState.LOADED for a in own)
    unreachable = [p for p in pods if not p.reachable]
    everything = loaded == len(own) and len(ready_pods) == replicas and replicas > 0
    status = current.model_copy(deep=True)
    status.adapters = adapters
    status.replicas = replicas
    status.ready_replicas = len(ready_pods)
    status.adapters_ready = f"{sum(a.state is AdapterState.LOADED for a in adapters)}/{len(adapters)}"
    status.endpoint = endpoint
    status.observed_generation = generation

    if everything:
        tenants = f" (attached: {len(adapters) - len(own)}, see each AdapterAttachment)" if attached else ""
        ready = (True, "AllAdaptersLoaded", f"{loaded} adapters answer on {len(ready_pods)} replicas{tenants}.")
    elif replicas == 0:
        ready = (False, "NoReplicas", "The engine has no replicas.")
    else:
        ready = (
            False,
            "AdaptersNotReady",
            f"{loaded}/{len(own)} adapters loaded on {len(ready_pods)}/{replicas} replicas.",
        )
    progressing = any(a.state in (AdapterState.LOADING, AdapterState.PENDING) for a in own) or len(pods) < replicas
    if failed:
        degraded = (True, "AdapterFailed", "; ".join(f"{a.name}: {a.message}" for a in failed))
    elif unreachable:
        degraded = (True, "AgentUnreachable", "; ".join(f"{p.name}: {p.error}" for p in unreachable))
    else:
        degraded = (False, "AsExpected", "")
    conditions = set_condition(status.conditions, "Ready", *ready, generation, now)
    conditions = set_condition(
        conditions,
        "Progressing",
        progressing,
        "Reconciling" if progressing else "Stable",
        "Loading adapters or waiting for replicas." if progressing else "",
        generation,
        now,
    )
    status.conditions = set_condition(conditions, "Degraded", *degraded, generation, now)
    return status
