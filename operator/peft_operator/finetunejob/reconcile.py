"""Bring one FineTuneJob's children and status in line with its spec. Level-triggered and idempotent:
every trigger (create, resume, Job or pod change, timer) runs the same function."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from kubernetes.client import ApiClient, ApiException

from .. import kube
from ..api import FineTuneJob, FineTuneJobStatus, Phase
from ..api.validation import SpecError, parse_object
from ..conditions import condition_is_true, set_condition
from ..naming import CANCEL_ANNOTATION, LABEL_FINETUNEJOB, training_job_name
from ..settings import OperatorSettings
from .job import render_training_job
from .plan import render_plan_configmap
from .secret import render_progress_secret
from .status import TERMINAL_PHASES, KubeEvent, Observation, compute_status
from .validation import cluster_problems

log = logging.getLogger(__name__)
PLURAL = "finetunejobs"
DEPLOYED = "Deployed"


def _validate(body: dict[str, Any]) -> tuple[FineTuneJob | None, str | None]:
    try:
        job = parse_object(FineTuneJob, body)
    except SpecError as error:
        return None, "; ".join(error.problems)
    problems = cluster_problems(job)
    return job, ("; ".join(problems) if problems else None)


def _ensure_children(
    client: ApiClient, job: FineTuneJob, settings: OperatorSettings
) -> tuple[dict[str, Any], list[KubeEvent]]:
    """The progress Secret, the plan ConfigMap and the Job; an Event when the Job is new."""
    if settings.progress_url:
        kube.ensure_namespaced(client, render_progress_secret(job, settings))
    kube.ensure_namespaced(client, render_plan_configmap(job, settings))
    training_job, created = kube.ensure_namespaced(client, render_training_job(job, settings))
    name = training_job["metadata"]["name"]
    return training_job, [KubeEvent("Normal", "JobCreated", f"Created Job {name}")] if created else []


def reconcile_finetunejob(client: ApiClient, namespace: str, name: str, settings: OperatorSettings) -> Phase | None:
    """One pass for one FineTuneJob; returns its phase afterwards (None if it is gone)."""
    body = kube.get_custom(client, PLURAL, namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None  # owner references let the garbage collector remove the Job, pods and ConfigMap
    current = FineTuneJobStatus.model_validate(body.get("status") or {})
    job, invalid = _validate(body)
    cancelled = (body["metadata"].get("annotations") or {}).get(CANCEL_ANNOTATION) == "true"
    job_name = training_job_name(name)
    observed_job: dict[str, Any] | None = None
    events: list[KubeEvent] = []
    if current.phase not in TERMINAL_PHASES and job is not None and invalid is None:
        if cancelled:
            kube.delete_job(client, namespace, job_name)
        else:
            observed_job, events = _ensure_children(client, job, settings)
    pods = kube.list_pods(client, namespace, {LABEL_FINETUNEJOB: name}) if observed_job else []
    spec = body.get("spec") or {}
    observation = Observation(
        generation=body["metadata"].get("generation"),
        queue=(spec.get("queue") or {}).get("name"),
        max_runtime=(spec.get("runPolicy") or {}).get("maxRuntime", "24h"),
        invalid=invalid,
        cancelled=cancelled,
        job=observed_job,
        pods=pods,
    )
    now = datetime.now(UTC)
    status, transitions = compute_status(current, observation, now)
    events += transitions
    if status.phase is Phase.SUCCEEDED and job is not None and job.spec.deploy is not None:
        status, deploy_event = _deploy(client, job, status, now)
        events.extend(deploy_event)
    if status != current:
        kube.patch_status(client, PLURAL, namespace, name, status.to_wire(), body["metadata"].get("resourceVersion"))
    for event in events:
        kube.post_event(client, body, event.type, event.reason, event.message)
    return status.phase


def needs_deploy(body: dict[str, Any]) -> bool:
    """A succeeded job whose adapter has yet to reach the AdapterDeployment named in spec.deploy."""
    status = FineTuneJobStatus.model_validate(body.get("status") or {})
    wants = bool((body.get("spec") or {}).get("deploy"))
    return wants and status.phase is Phase.SUCCEEDED and not condition_is_true(status.conditions, DEPLOYED)


def _deploy(
    client: ApiClient, job: FineTuneJob, status: FineTuneJobStatus, now: datetime
) -> tuple[FineTuneJobStatus, list[KubeEvent]]:
    """Add the adapter to the AdapterDeployment named in spec.deploy (once; server-side apply)."""
    if condition_is_true(status.conditions, DEPLOYED):
        return status, []
    deploy, meta = job.spec.deploy, job.metadata
    assert deploy is not None and meta.name is not None
    adapter_name = deploy.adapter_name or meta.name
    body = {
        "apiVersion": "peft.dev/v1alpha1",
        "kind": "AdapterDeployment",
        "metadata": {"name": deploy.adapter_deployment, "namespace": meta.namespace},
        "spec": {"adapters": [{"name": adapter_name, "source": {"fineTuneJobRef": {"name": meta.name}}}]},
    }
    target = f"AdapterDeployment {deploy.adapter_deployment}"
    if kube.get_custom(client, "adapterdeployments", meta.namespace or "", deploy.adapter_deployment) is None:
        ok, reason, message = False, "AdapterDeploymentNotFound", f"{target} does not exist in this namespace."
    else:
        try:
            # One field manager per job: each job owns exactly its own entry of the adapters list-map.
            kube.server_side_apply(client, body, field_manager=f"peft-operator-ftj-{meta.name}")
            ok, reason, message = True, "AdapterAdded", f"Added adapter {adapter_name} to {target}."
        except ApiException as error:
            ok, reason, message = False, "DeployFailed", f"Could not add the adapter to {target}: {error.reason}"
    previous = next((c for c in status.conditions if c.type == DEPLOYED), None)
    updated = status.model_copy(deep=True)
    updated.conditions = set_condition(
        status.conditions, DEPLOYED, ok, reason, message, status.observed_generation, now
    )
    if previous is not None and previous.reason == reason:
        return updated, []  # still waiting for the same thing: no repeated Event
    return updated, [KubeEvent("Normal" if ok else "Warning", reason, message)]
