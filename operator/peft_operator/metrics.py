"""Prometheus metrics of the operator, served on PEFT_METRICS_PORT at /metrics."""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILES = Counter("peft_operator_reconciles_total", "Reconcile passes, by kind.", ["kind"])
RECONCILE_ERRORS = Counter("peft_operator_reconcile_errors_total", "Reconcile passes that raised, by kind.", ["kind"])
FINETUNEJOBS = Gauge("peft_operator_finetunejobs", "FineTuneJobs this operator has seen, by phase.", ["phase"])
ADAPTER_LOAD_SECONDS = Histogram(
    "peft_operator_adapter_load_seconds",
    "Time for one agent to fetch, verify and load one adapter.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
)
LOADED_ADAPTERS = Gauge(
    "peft_operator_loaded_adapters", "Adapters Loaded on every replica, per AdapterDeployment.", ["namespace", "name"]
)
TARGET_APPLIES = Counter(
    "peft_operator_target_applies_total",
    "Server-side applies of the operator's fields to a targetRef Deployment, per AdapterDeployment.",
    ["namespace", "name"],
)
TARGET_RELEASES = Counter(
    "peft_operator_target_releases_total",
    "targetRef Deployments whose operator fields were removed, per former AdapterDeployment.",
    ["namespace", "name"],
)

_phases: dict[tuple[str, str], str] = {}
_phases_lock = threading.Lock()


def record_finetunejob_phase(namespace: str, name: str, phase: str | None) -> None:
    """Track the phase of one job (None: it is gone) and refresh the per-phase counts."""
    with _phases_lock:
        if phase is None:
            _phases.pop((namespace, name), None)
        else:
            _phases[(namespace, name)] = phase
        counts: dict[str, int] = {}
        for value in _phases.values():
            counts[value] = counts.get(value, 0) + 1
        for known in ("Pending", "Queued", "Running", "Succeeded", "Failed", "Cancelled"):
            FINETUNEJOBS.labels(phase=known).set(counts.get(known, 0))


def serve_metrics(port: int) -> None:
    start_http_server(port)
