"""Bring one FineTuneJob's children and status in line with its spec. Level-triggered and idempotent:
every trigger (create, resume, Job or pod change, timer) runs the same function."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes.client import ApiClient

from .. import kube
from ..api import FineTuneJob, FineTuneJobStatus, Phase
from ..api.finetunejob import RunPolicy
from ..api.validation import SpecError, parse_object
from ..conditions import condition_is_true
from ..events import KubeEvent, post_event
from ..naming import (
    CANCEL_ANNOTATION,
    LABEL_COMPONENT,
    LABEL_FINETUNEJOB,
    preflight_job_name,
    training_job_name,
)
from ..settings import OperatorSettings
from .deploy import DEPLOYED, EVAL_GATE_NOT_MET, deploy_adapter
from .job import needs_preflight, render_preflight_job, render_trainer_service, render_training_job
from .plan import render_plan_configmap
from .references import missing_secret, unshared_claims
from .secret import render_progress_secret
from .status import PREFLIGHT_PASSED, TERMINAL_PHASES, Observation, Verdict, compute_status, job_condition
from .validation import cluster_problems

log = logging.getLogger(__name__)
# The periodic re-check (`wants_resync` says of which jobs): a missed event heals within this many seconds.
RESYNC_SECONDS = 30.0


def _validate(body: dict[str, Any]) -> tuple[FineTuneJob | None, str | None]:
    try:
        job = parse_object(FineTuneJob, body)
    except SpecError as error:
        return None, "; ".join(error.problems)
    problems = cluster_problems(job)
    return job, ("; ".join(problems) if problems else None)


@dataclass
class Children:
    """What `_ensure_children` found or created: the training Job once it may exist, else the preflight's."""

    job: dict[str, Any] | None = None
    preflight_job: dict[str, Any] | None = None
    preflight_pods: list[dict[str, Any]] = field(default_factory=list)
    events: list[KubeEvent] = field(default_factory=list)


def _ensure_children(
    client: ApiClient, job: FineTuneJob, settings: OperatorSettings, current: FineTuneJobStatus
) -> Children:
    """The progress Secret, the plan ConfigMap, the preflight Job where one applies, and the training Job
    once the preflight has passed. JobCreated is derived from the status, not from this call having created
    the Job: until the status names the Job, every pass announces it, so an operator killed between creating
    the Job and posting the Event posts it next time."""
    meta = job.metadata
    assert meta.name is not None and meta.namespace is not None
    children = Children()
    with kube.creating_children():
        if settings.progress_url:
            kube.ensure_namespaced(client, render_progress_secret(job, settings))
        kube.ensure_namespaced(client, render_plan_configmap(job, settings))
        awaiting_preflight = current.job_name is None and not condition_is_true(current.conditions, PREFLIGHT_PASSED)
        if awaiting_preflight and needs_preflight(job, settings):
            children.preflight_job, _ = kube.ensure_namespaced(client, render_preflight_job(job, settings))
            selector = {LABEL_FINETUNEJOB: meta.name, LABEL_COMPONENT: "preflight"}
            children.preflight_pods = kube.list_pods(client, meta.namespace, selector)
            if job_condition(children.preflight_job, "Complete") is None:
                return children  # no GPU is requested before the preflight has passed
        if job.spec.resources.nodes > 1:  # names the pods before they start: their rendezvous needs DNS
            kube.ensure_namespaced(client, render_trainer_service(job))
        children.job, _ = kube.ensure_namespaced(client, render_training_job(job, settings))
    if current.job_name is None:
        children.events.append(KubeEvent("Normal", "JobCreated", f"Created Job {children.job['metadata']['name']}"))
        namespace = meta.namespace
        for problem in unshared_claims(job, lambda claim: kube.claim_access_modes(client, namespace, claim)):
            children.events.append(KubeEvent("Warning", "ClaimNotShared", problem))
    return children


def _blocked(client: ApiClient, job: FineTuneJob, current: FineTuneJobStatus) -> Verdict | None:
    """Why no child may be created yet: a referenced Secret or key is missing (checked until the Job exists)."""
    if current.job_name is not None:
        return None
    namespace = job.metadata.namespace or ""
    return missing_secret(job, lambda secret: kube.secret_keys(client, namespace, secret))


def reconcile_finetunejob(client: ApiClient, namespace: str, name: str, settings: OperatorSettings) -> Phase | None:
    """One pass for one FineTuneJob; returns its phase afterwards (None if it is gone)."""
    body = kube.get_custom(client, FineTuneJob.PLURAL, namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None  # owner references let the garbage collector remove the Job, pods and ConfigMap
    current = FineTuneJobStatus.model_validate(body.get("status") or {})
    job, invalid = _validate(body)
    cancelled = (body["metadata"].get("annotations") or {}).get(CANCEL_ANNOTATION) == "true"
    children = Children()
    blocked: Verdict | None = None
    if current.phase not in TERMINAL_PHASES and job is not None and invalid is None:
        if cancelled:
            kube.delete_job(client, namespace, training_job_name(name))
            kube.delete_job(client, namespace, preflight_job_name(name))
        elif (blocked := _blocked(client, job, current)) is None:
            try:
                children = _ensure_children(client, job, settings, current)
            except kube.ChildNotCreatedError as error:
                blocked = Verdict(Phase.PENDING, error.reason, str(error))
    trainer_pods = {LABEL_FINETUNEJOB: name, LABEL_COMPONENT: "trainer"}
    pods = kube.list_pods(client, namespace, trainer_pods) if children.job else []
    events = children.events
    observation = Observation(
        generation=body["metadata"].get("generation"),
        queue=job.spec.queue.name if job is not None and job.spec.queue is not None else None,
        run_policy=job.spec.run_policy if job is not None else RunPolicy(),
        invalid=invalid,
        cancelled=cancelled,
        blocked=blocked,
        job=children.job,
        pods=pods,
        preflight_job=children.preflight_job,
        preflight_pods=children.preflight_pods,
    )
    now = datetime.now(UTC)
    status, transitions = compute_status(current, observation, now)
    events += transitions
    if status.phase is Phase.SUCCEEDED and job is not None and job.spec.deploy is not None:
        outcome = deploy_adapter(client, job, status, now)
        status = outcome.status
        events += outcome.events
        for adep, event in outcome.deployment_events:
            post_event(client, adep, event)
    # Events first: a kill before the status write repeats them on the next pass instead of losing them.
    for event in events:
        post_event(client, body, event)
    if status != current:
        kube.patch_status(
            client, FineTuneJob.PLURAL, namespace, name, status.to_wire(), body["metadata"].get("resourceVersion")
        )
    if status.phase is Phase.FAILED and children.job and not _job_finished(children.job):
        # Failed before its Job did (a permanent error under torchrun): no pod may go on or retry, and the
        # failed pods keep their logs.
        kube.stop_job_retries(client, namespace, training_job_name(name))
    return status.phase


def _job_finished(job: dict[str, Any]) -> bool:
    return job_condition(job, "Failed") is not None or job_condition(job, "Complete") is not None


def wants_resync(body: dict[str, Any]) -> bool:
    """Unfinished jobs, and succeeded ones whose adapter has yet to be deployed; finished ones stay still."""
    return (body.get("status") or {}).get("phase") not in {p.value for p in TERMINAL_PHASES} or needs_deploy(body)


def needs_deploy(body: dict[str, Any]) -> bool:
    """A succeeded job whose adapter has yet to reach the AdapterDeployment named in spec.deploy (and did
    not fail its eval gate, which no later pass can change)."""
    status = FineTuneJobStatus.model_validate(body.get("status") or {})
    wants = bool((body.get("spec") or {}).get("deploy"))
    gated = any(c.type == DEPLOYED and c.reason == EVAL_GATE_NOT_MET for c in status.conditions)
    return (
        wants and status.phase is Phase.SUCCEEDED and not gated and not condition_is_true(status.conditions, DEPLOYED)
    )
