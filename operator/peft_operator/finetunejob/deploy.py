"""spec.deploy: put a succeeded job's adapter into an AdapterDeployment, without taking over anyone's entry.

The rule: a job writes the entry named `deploy.adapterName` only when it is absent, or when its source is
`fineTuneJobRef` to this job or to the job named in `deploy.replaces` (the version this one supersedes).
Any other entry (a hand-written URI, another tenant's job) is left alone: the job reports Deployed=False
with reason AdapterNameTaken, and the AdapterDeployment gets a Warning Event."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubernetes.client import ApiClient, ApiException

from .. import kube
from ..api import API_VERSION, AdapterDeployment, FineTuneJob, FineTuneJobStatus
from ..api.finetunejob import DeployGate, Progress
from ..conditions import condition_is_true, set_condition
from ..events import KubeEvent

DEPLOYED = "Deployed"
EVAL_GATE_NOT_MET = "EvalGateNotMet"  # final: a finished job's eval results never change


@dataclass
class DeployOutcome:
    status: FineTuneJobStatus
    events: list[KubeEvent] = field(default_factory=list)  # on the FineTuneJob
    deployment_events: list[tuple[dict[str, Any], KubeEvent]] = field(default_factory=list)  # on the AdapterDeployment


def clash(entries: list[dict[str, Any]], adapter_name: str, job: str, replaces: str | None) -> str | None:
    """What already holds `adapter_name` when this job may not replace it, else None."""
    entry = next((e for e in entries if e.get("name") == adapter_name), None)
    if entry is None:
        return None
    source = entry.get("source") or {}
    owner = (source.get("fineTuneJobRef") or {}).get("name")
    if owner is not None and owner in (job, replaces):
        return None
    return f"FineTuneJob {owner}" if owner else f"{source.get('uri')}"


def gate_shortfalls(gate: DeployGate, progress: Progress | None) -> list[str]:
    """What the finished job's measurements miss of spec.deploy.when, one sentence each (empty: it passes)."""
    eval_loss = progress.eval_loss if progress is not None else None
    eval_rows = (progress.eval_rows if progress is not None else None) or 0
    shortfalls = []
    if gate.max_eval_loss is not None:
        if eval_loss is None:
            shortfalls.append(f"no evalLoss was measured (deploy.when.maxEvalLoss is {gate.max_eval_loss})")
        elif eval_loss > float(gate.max_eval_loss):
            shortfalls.append(f"evalLoss {eval_loss:g} is above deploy.when.maxEvalLoss {gate.max_eval_loss}")
    if gate.min_eval_rows is not None and eval_rows < gate.min_eval_rows:
        shortfalls.append(
            f"evalLoss was measured on {eval_rows} held-out rows, fewer than deploy.when.minEvalRows "
            f"{gate.min_eval_rows} (add data or raise dataset.validationSplit)"
        )
    return shortfalls


def deploy_adapter(client: ApiClient, job: FineTuneJob, status: FineTuneJobStatus, now: datetime) -> DeployOutcome:
    """Add the adapter to the AdapterDeployment named in spec.deploy (server-side apply, one field manager
    per job, so each job owns exactly its own entry of the adapters list-map), if it passes deploy.when."""
    if condition_is_true(status.conditions, DEPLOYED):
        return DeployOutcome(status)
    deploy, meta = job.spec.deploy, job.metadata
    assert deploy is not None and meta.name is not None and meta.namespace is not None
    adapter_name = deploy.adapter_name or meta.name
    target = f"AdapterDeployment {deploy.adapter_deployment}"
    shortfalls = gate_shortfalls(deploy.when, status.progress) if deploy.when is not None else []
    adep = (
        None
        if shortfalls
        else kube.get_custom(client, AdapterDeployment.PLURAL, meta.namespace, deploy.adapter_deployment)
    )
    taken_by = None
    if shortfalls:
        ok, reason = False, EVAL_GATE_NOT_MET
        message = f"Not deployed to {target}: " + "; ".join(shortfalls) + "."
    elif adep is None:
        ok, reason, message = False, "AdapterDeploymentNotFound", f"{target} does not exist in this namespace."
    elif (taken_by := clash(adep["spec"].get("adapters") or [], adapter_name, meta.name, deploy.replaces)) is not None:
        ok, reason = False, "AdapterNameTaken"
        message = (
            f"{target} already serves an adapter named {adapter_name}, from {taken_by}; this job does not replace "
            "it. Choose another spec.deploy.adapterName, remove that entry, or (for a new version of that job) "
            "set spec.deploy.replaces to the job it replaces."
        )
    else:
        entry = {"name": adapter_name, "source": {"fineTuneJobRef": {"name": meta.name}}}
        body = {
            "apiVersion": API_VERSION,
            "kind": AdapterDeployment.KIND,
            "metadata": {"name": deploy.adapter_deployment, "namespace": meta.namespace},
            "spec": {"adapters": [entry]},
        }
        taking_over = any(e.get("name") == adapter_name for e in adep["spec"].get("adapters") or [])
        try:
            # Force only to take over the predecessor's entry; a new name is never forced, so an entry that
            # someone else adds meanwhile is a 409 conflict (retried, then refused above), not overwritten.
            kube.server_side_apply(client, body, field_manager=f"peft-operator-ftj-{meta.name}", force=taking_over)
            ok, reason, message = True, "AdapterAdded", f"Added adapter {adapter_name} to {target}."
        except ApiException as error:
            refusal = kube.refusal_message(error)
            if refusal is None:
                raise
            ok, reason, message = False, "DeployFailed", f"Could not add the adapter to {target}: {refusal}"
    previous = next((c for c in status.conditions if c.type == DEPLOYED), None)
    outcome = DeployOutcome(status.model_copy(deep=True))
    outcome.status.conditions = set_condition(
        status.conditions, DEPLOYED, ok, reason, message, status.observed_generation, now
    )
    if previous is not None and previous.reason == reason:
        return outcome  # still waiting for the same thing: no repeated Event
    outcome.events.append(KubeEvent("Normal" if ok else "Warning", reason, message))
    if adep is not None and taken_by is not None:
        outcome.deployment_events.append(
            (
                adep,
                KubeEvent(
                    "Warning",
                    "AdapterNameTaken",
                    f"FineTuneJob {meta.name} asked to deploy its adapter as {adapter_name}, which serves "
                    f"{taken_by}: left unchanged.",
                ),
            )
        )
    return outcome
