"""Bring one AdapterDeployment in line with its spec: the engine exists, and every serving pod's loaded
set equals spec.adapters (load new, unload removed, replace changed digests). Level-triggered: the same
pass runs on spec changes, pod changes and a periodic re-check that restores adapters an engine lost."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

from kubernetes.client import ApiClient

from .. import kube, metrics
from ..adapterattachment import parent as attachments
from ..adapterattachment.admission import AttachmentKey
from ..api import AdapterDeployment, AdapterDeploymentStatus, FineTuneJob, Scheme, parse_uri
from ..api.adapterdeployment import AdapterState, ApiKeys
from ..api.agent import Keyring
from ..api.validation import SpecError, parse_object
from ..conditions import set_condition
from ..events import KubeEvent, post_event
from ..local_only import local_only_problems
from ..naming import ADAPTERS_READY_GATE, LABEL_ADAPTERDEPLOYMENT, admin_token_secret_name
from ..secret_refs import SecretReference, first_missing
from ..settings import OperatorSettings
from .access import IssuedKeys, build_keyring
from .agent_client import AgentClient, AgentRefusal, AgentUnreachableError
from .engine import (
    adapter_credentials_prefix,
    endpoint,
    render_admin_token_secret,
    render_engine_deployment,
    render_engine_service,
    served_model_name,
)
from .sources import DesiredAdapter, attached_adapters, resolve_adapters
from .status import LoadFailure, PodReport, compute_status, failed_adapters, may_retry, pod_is_complete
from .target import engine_configured, ensure_target

log = logging.getLogger(__name__)
AgentFactory = Callable[[str, str], AgentClient]
MAX_PARALLEL_PODS = 8
# The periodic re-check: an engine that lost its adapters (a restart) gets them back within this many seconds.
RESYNC_SECONDS = 10.0


def wants_resync(_body: dict[str, Any]) -> bool:
    """Every AdapterDeployment: only asking the agents tells whether the engines still hold the adapters."""
    return True


def sync_pod(
    agent: AgentClient,
    pod_name: str,
    desired: list[DesiredAdapter],
    held_back: frozenset[str],
    keyring: Keyring | None = None,
) -> PodReport:
    """Make one engine hold exactly the desired adapters, and its gate exactly the `keyring` (access.apiKeys:
    Required; first, so a revoked key stops before anything else happens); report what it holds afterwards."""
    report = PodReport(name=pod_name)
    try:
        if keyring is not None:
            agent.put_keyring(keyring)
        listing = agent.loaded()
        engine_holds = {a.name: a.digest for a in listing.adapters if a.state is AdapterState.LOADED}
        engine_pins = {a.name: a.pinned for a in listing.adapters if a.pinned is not None}
        report.resident = {a.name for a in listing.adapters if a.resident}
        wanted = {a.name for a in desired if a.loadable}
        for name in sorted(set(engine_holds) - wanted):
            agent.unload(name)
            log.info("Unloaded adapter %s from pod %s", name, pod_name)
        for adapter in desired:
            if not adapter.loadable or adapter.name in held_back:
                continue
            assert adapter.uri is not None and adapter.sha256 is not None
            if engine_holds.get(adapter.name) == adapter.sha256 and engine_pins.get(adapter.name, adapter.pinned) == (
                adapter.pinned
            ):
                report.loaded[adapter.name] = adapter.sha256
                continue
            try:
                with metrics.ADAPTER_LOAD_SECONDS.time():
                    prefix = (
                        adapter_credentials_prefix(adapter.credentials_secret) if adapter.credentials_secret else None
                    )
                    loaded = agent.load(
                        adapter.name, adapter.uri, adapter.sha256, prefix, adapter.credentials, pinned=adapter.pinned
                    )
                report.loaded[adapter.name] = loaded.digest or adapter.sha256
                log.info("Loaded adapter %s (%s) on pod %s", adapter.name, adapter.sha256[:12], pod_name)
            except AgentRefusal as refusal:
                report.failures[adapter.name] = LoadFailure(refusal.reason, refusal.message)
    except AgentUnreachableError as error:
        report.reachable, report.error = False, str(error)
    except AgentRefusal as refusal:  # listing or unloading refused: the agent itself is unhealthy
        report.reachable, report.error = False, f"{refusal.reason}: {refusal.message}"
    return report


def _serving_pods(client: ApiClient, namespace: str, name: str) -> list[dict[str, Any]]:
    pods = kube.list_pods(client, namespace, {LABEL_ADAPTERDEPLOYMENT: name})
    return [
        p
        for p in pods
        if (p.get("status") or {}).get("phase") == "Running"
        and (p.get("status") or {}).get("podIP")
        and not p["metadata"].get("deletionTimestamp")
    ]


@dataclass(frozen=True)
class Blocked:
    """A user mistake that stops serving: Ready=False and Degraded with this reason and a sentence with the
    fix. It heals on a later pass once fixed (the resync re-checks), and never becomes a retry loop."""

    reason: str
    message: str


def _admin_token(client: ApiClient, adep: AdapterDeployment) -> str | Blocked:
    meta = adep.metadata
    namespace = meta.namespace
    assert namespace is not None and meta.name is not None
    ref = adep.spec.token_secret_ref
    if ref is not None:
        token_ref = SecretReference("spec.tokenSecretRef", ref.name, ref.key)
        lookup = partial(kube.secret_keys, client, namespace)
        if (missing := first_missing([token_ref], namespace, lookup, "the adapters load")) is not None:
            return Blocked(missing.reason, missing.message)
        token = kube.read_secret_key(client, namespace, ref.name, ref.key)
        if not token:
            return Blocked(
                "SecretKeyNotFound",
                f"spec.tokenSecretRef: key {ref.key} of Secret {ref.name} is empty; put the admin token in it.",
            )
        return token
    name = admin_token_secret_name(meta.name)
    existing = kube.read_secret_key(client, namespace, name, "token")
    if existing is not None:
        return existing
    kube.ensure_namespaced(client, render_admin_token_secret(adep, secrets.token_urlsafe(32)))
    token = kube.read_secret_key(client, namespace, name, "token")
    assert token is not None
    return token


def _adapter_claims(desired: list[DesiredAdapter]) -> list[str]:
    uris = (parse_uri(a.uri) for a in desired if a.uri is not None)
    return sorted({u.authority for u in uris if u.scheme is Scheme.PVC})


def _adapter_secrets(desired: list[DesiredAdapter]) -> list[str]:
    return sorted({a.credentials_secret for a in desired if a.credentials_secret})


def _ensure_engine(
    client: ApiClient, adep: AdapterDeployment, settings: OperatorSettings, desired: list[DesiredAdapter]
) -> tuple[int, Blocked | None, tuple[str, ...]]:
    """Create or equip the engine; return (desired replicas, a problem that blocks serving, the vLLM flags a
    targetRef engine's owner should add)."""
    meta = adep.metadata
    assert meta.namespace is not None and meta.name is not None
    if adep.spec.runtime is not None:
        kube.ensure_namespaced(client, render_engine_service(adep))
        deployment = render_engine_deployment(adep, settings, _adapter_claims(desired), _adapter_secrets(desired))
        kube.server_side_apply(client, deployment, field_manager=kube.FIELD_MANAGER)
        return adep.spec.runtime.replicas, None, ()
    state = ensure_target(client, adep, settings, _adapter_claims(desired), _adapter_secrets(desired))
    return state.replicas, Blocked(*state.problem) if state.problem else None, state.flags_to_add


def _prepare(
    client: ApiClient,
    adep: AdapterDeployment,
    settings: OperatorSettings,
    current: AdapterDeploymentStatus,
    attached: attachments.Attachments,
    base_name: str,
) -> tuple[str, list[DesiredAdapter], int, tuple[str, ...], IssuedKeys | None] | Blocked:
    """The admin token, the adapters to serve (its own, then those other namespaces attached), the engine's
    replicas, the vLLM flags its manifest lacks and the API keyring (access.apiKeys: Required); or what
    blocks serving."""
    token = _admin_token(client, adep)
    if isinstance(token, Blocked):
        return token
    keys = None
    if adep.spec.access.api_keys is ApiKeys.REQUIRED:
        accepted = [item.model for item in attached.items if item.verdict.accepted]
        keys = build_keyring(client, adep, accepted, base_name)
    namespace = adep.metadata.namespace
    desired = resolve_adapters(
        adep,
        lambda job: kube.get_custom(client, FineTuneJob.PLURAL, namespace or "", job),
        {a.name: a for a in current.adapters},
    ) + attached_adapters(attached.loadable)
    replicas, blocked, flags = _ensure_engine(client, adep, settings, desired)
    return blocked if blocked is not None else (token, desired, replicas, flags, keys)


def _set_gate(client: ApiClient, pod: dict[str, Any], ready: bool, now: datetime) -> None:
    wanted = "True" if ready else "False"
    conditions = (pod.get("status") or {}).get("conditions") or []
    if any(c.get("type") == ADAPTERS_READY_GATE and c.get("status") == wanted for c in conditions):
        return
    condition = {
        "type": ADAPTERS_READY_GATE,
        "status": wanted,
        "reason": "AllAdaptersLoaded" if ready else "AdaptersLoading",
        "lastTransitionTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    kube.patch_pod_condition(client, pod["metadata"]["namespace"], pod["metadata"]["name"], condition)


def _adapter_events(
    before: AdapterDeploymentStatus, after: AdapterDeploymentStatus, desired: list[DesiredAdapter]
) -> list[KubeEvent]:
    previous = {a.name: a for a in before.adapters}
    events = [
        KubeEvent("Warning", "SourceJobDeleted", f"Adapter {a.name}: {a.source_gone}")
        for a in desired
        if a.source_gone is not None and (old := previous.get(a.name)) is not None and old.message != a.source_gone
    ]
    for adapter in after.adapters:
        old = previous.get(adapter.name)
        changed = old is None or old.state != adapter.state or old.digest != adapter.digest
        if not changed:
            continue
        if adapter.state is AdapterState.LOADED:
            events.append(
                KubeEvent(
                    "Normal",
                    "AdapterLoaded",
                    f"Adapter {adapter.name} is served by {adapter.loaded_replicas} replicas.",
                )
            )
        elif adapter.state is AdapterState.FAILED:
            events.append(KubeEvent("Warning", "AdapterFailed", f"Adapter {adapter.name}: {adapter.message}"))
    return events


def _refused(
    current: AdapterDeploymentStatus, generation: int | None, reason: str, message: str, now: datetime
) -> tuple[AdapterDeploymentStatus, list[KubeEvent]]:
    """Not servable as specified: say why in Ready/Degraded, and in one Event per new problem."""
    before = next((c for c in current.conditions if c.type == "Ready"), None)
    status = current.model_copy(deep=True)
    status.observed_generation = generation
    status.conditions = set_condition(status.conditions, "Ready", False, reason, message, generation, now)
    status.conditions = set_condition(status.conditions, "Degraded", True, reason, message, generation, now)
    repeated = before is not None and before.reason == reason and before.message == message
    return status, [] if repeated else [KubeEvent("Warning", reason, message)]


def reconcile_adapterdeployment(
    client: ApiClient, namespace: str, name: str, settings: OperatorSettings, agent_factory: AgentFactory = AgentClient
) -> None:
    body = kube.get_custom(client, AdapterDeployment.PLURAL, namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return
    current = AdapterDeploymentStatus.model_validate(body.get("status") or {})
    generation = body["metadata"].get("generation")
    now = datetime.now(UTC)
    attached: attachments.Attachments | None = None
    # Which Secret holds each attachment's API key: {} when keys are not required, None when not known
    # this pass (the attachments keep what they were told).
    key_secrets: dict[AttachmentKey, str] | None = {}
    try:
        adep = parse_object(AdapterDeployment, body)
        problems = local_only_problems({"spec.baseModel.uri": adep.spec.base_model.uri})
        if problems:
            raise SpecError(AdapterDeployment.KIND, name, problems)
        key_secrets = None if adep.spec.access.api_keys is ApiKeys.REQUIRED else {}
        base_name = served_model_name(adep.spec.base_model.uri)
        attached = attachments.gather(client, adep, settings.watch_namespaces, frozenset({base_name}))
        with kube.creating_children():
            prepared = _prepare(client, adep, settings, current, attached, base_name)
    except SpecError as error:
        status, events = _refused(current, generation, "InvalidSpec", "; ".join(error.problems), now)
    except kube.ChildNotCreatedError as error:
        status, events = _refused(current, generation, error.reason, str(error), now)
    else:
        if isinstance(prepared, Blocked):
            status, events = _refused(current, generation, prepared.reason, prepared.message, now)
        else:
            token, desired, replicas, flags, keys = prepared
            keyring = keys.keyring if keys else None
            key_secrets = keys.attachment_secrets if keys else {}
            previous = {a.name: a for a in current.adapters}
            held_back = frozenset(
                a.name for a in desired if a.loadable and not may_retry(previous.get(a.name), a.sha256, now)
            )
            pods = _serving_pods(client, namespace, name)
            with ThreadPoolExecutor(max_workers=MAX_PARALLEL_PODS) as pool:
                reports = list(
                    pool.map(
                        lambda pod: sync_pod(
                            agent_factory(pod["status"]["podIP"], token),
                            pod["metadata"]["name"],
                            desired,
                            held_back,
                            keyring,
                        ),
                        pods,
                    )
                )
            status = compute_status(current, desired, reports, replicas, generation, endpoint(adep), now, held_back)
            failed = failed_adapters(status)
            for pod, report in zip(pods, reports, strict=True):
                _set_gate(client, pod, pod_is_complete(report, desired, failed), now)
            events = _adapter_events(current, status, desired)
            if adep.spec.target_ref is not None:
                events += engine_configured(status, flags, adep.spec.target_ref.name, generation, now)
            loaded_everywhere = sum(a.state is AdapterState.LOADED for a in status.adapters)
            metrics.LOADED_ADAPTERS.labels(namespace=namespace, name=name).set(loaded_everywhere)
    # Events first: a kill before the status write repeats them on the next pass instead of losing them.
    for event in events:
        post_event(client, body, event)
    if status != current:
        kube.patch_status(
            client, AdapterDeployment.PLURAL, namespace, name, status.to_wire(), body["metadata"].get("resourceVersion")
        )
    if attached is not None:
        attachments.report(client, attached, status, status.endpoint, now, key_secrets)
