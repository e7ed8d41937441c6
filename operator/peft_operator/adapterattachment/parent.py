"""The AdapterDeployment's side of attachment, as a Gateway controller handles its Routes: gather the
attachments that name a deployment, decide which it accepts, resolve their sources in the tenants'
namespaces, and, after the pass that loads them, report back on each attachment in its own namespace.

The tenant's storage credentials are read here, from the tenant's namespace, for accepted attachments only;
they travel in memory to the agent with the one load request that needs them (`SourceCredentials`) and are
never written to any object, Event or log of the platform's namespace."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache, partial
from typing import Any

from kubernetes.client import ApiClient, ApiException, CoreV1Api, CustomObjectsApi

from .. import kube
from ..api import GROUP, VERSION, AdapterAttachment, AdapterAttachmentStatus, AdapterDeployment, AdapterDeploymentStatus
from ..api.adapterattachment import served_name
from ..api.adapterdeployment import AttachmentsFrom
from ..api.agent import SourceCredentials
from ..api.validation import SpecError, parse_object
from ..events import post_event
from .admission import AttachmentKey, Verdict, admit, key_of
from .sources import ResolvedSource, credentials_from, resolve_source
from .status import Serving, attachment_events, attachment_status

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttachedAdapter:
    """An accepted attachment whose source resolved: what the agents should load, under its served name."""

    served_name: str
    uri: str
    sha256: str
    credentials: SourceCredentials | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Attachment:
    body: dict[str, Any]
    model: AdapterAttachment
    verdict: Verdict
    source: ResolvedSource


@dataclass
class Attachments:
    """Every valid attachment naming one AdapterDeployment, with its verdict and resolved source."""

    items: list[Attachment]
    loadable: list[AttachedAdapter]


def _list(client: ApiClient, deployment: AdapterDeployment, namespaces: tuple[str, ...]) -> list[dict[str, Any]]:
    selector = (
        f"spec.adapterDeploymentRef.namespace={deployment.metadata.namespace},"
        f"spec.adapterDeploymentRef.name={deployment.metadata.name}"
    )
    api = CustomObjectsApi(client)
    plural = AdapterAttachment.PLURAL
    if not namespaces:
        return api.list_cluster_custom_object(GROUP, VERSION, plural, field_selector=selector)["items"]  # type: ignore[no-any-return]
    items: list[dict[str, Any]] = []
    for namespace in namespaces:
        items += api.list_namespaced_custom_object(GROUP, VERSION, namespace, plural, field_selector=selector)["items"]
    return items


def _namespace_labels(client: ApiClient, namespaces: set[str]) -> dict[str, dict[str, str]]:
    core = CoreV1Api(client)
    return {ns: dict(core.read_namespace(ns).metadata.labels or {}) for ns in sorted(namespaces)}


def _credentials(client: ApiClient, namespace: str, secret: str) -> SourceCredentials | ResolvedSource:
    return credentials_from(secret, kube.read_secret_data(client, namespace, secret) or {})


def gather(
    client: ApiClient, deployment: AdapterDeployment, namespaces: tuple[str, ...], reserved: frozenset[str]
) -> Attachments:
    """`namespaces`: the operator's watched namespaces (empty: cluster-wide); `reserved`: served names no
    attachment may take (the base model's)."""
    parsed: list[tuple[dict[str, Any], AdapterAttachment]] = []
    for body in _list(client, deployment, namespaces):
        try:
            parsed.append((body, parse_object(AdapterAttachment, body)))
        except SpecError:
            continue  # its own controller reports InvalidSpec on it
    selecting = deployment.spec.attachments.from_ is AttachmentsFrom.SELECTOR
    labels = _namespace_labels(client, {key_of(m)[0] for _, m in parsed}) if selecting else {}
    verdicts = admit(deployment, [m for _, m in parsed], labels, reserved)
    # One GET per object and pass: a tenant's attachments often share a Secret.
    jobs = cache(partial(kube.get_custom, client, "finetunejobs"))
    secret_keys = cache(partial(kube.secret_keys, client))
    credentials_in = cache(partial(_credentials, client))
    items, loadable = [], []
    for body, model in parsed:
        namespace = key_of(model)[0]
        source = resolve_source(model.spec, partial(jobs, namespace), partial(secret_keys, namespace))
        verdict = verdicts[key_of(model)]
        credentials = None
        if verdict.accepted and source.resolved and source.credentials_secret:
            found = credentials_in(namespace, source.credentials_secret)
            source, credentials = (found, None) if isinstance(found, ResolvedSource) else (source, found)
        items.append(Attachment(body, model, verdict, source))
        if verdict.accepted and source.resolved:
            assert source.uri is not None and source.sha256 is not None
            name = served_name(namespace, model.spec.name)
            loadable.append(AttachedAdapter(name, source.uri, source.sha256, credentials))
    return Attachments(items, loadable)


def write_status(client: ApiClient, body: dict[str, Any], status: AdapterAttachmentStatus) -> None:
    """Events first, then the status (with a resourceVersion precondition); a 409 waits for the next pass."""
    meta = body["metadata"]
    current = AdapterAttachmentStatus.model_validate(body.get("status") or {})
    for event in attachment_events(current, status):
        post_event(client, body, event)
    if status == current:
        return
    try:
        kube.patch_status(
            client,
            AdapterAttachment.PLURAL,
            meta["namespace"],
            meta["name"],
            status.to_wire(),
            meta.get("resourceVersion"),
        )
    except ApiException as error:
        if error.status not in (404, 409):
            raise
        log.info("AdapterAttachment %s/%s moved on; its status follows next pass", meta["namespace"], meta["name"])


def report(
    client: ApiClient,
    attachments: Attachments,
    deployment_status: AdapterDeploymentStatus,
    endpoint: str | None,
    now: datetime,
    key_secrets: Mapping[AttachmentKey, str] | None,
) -> None:
    """Tell each attachment, in its own namespace, what the deployment decided, where it is loaded and, when
    the deployment requires API keys, which Secret there holds its key (`key_secrets`: the attachments whose
    key was issued; None: not known this pass, each keeps what it was told)."""
    by_name = {a.name: a for a in deployment_status.adapters}
    for item in attachments.items:
        namespace = key_of(item.model)[0]
        name = served_name(namespace, item.model.spec.name)
        serving = Serving(endpoint, deployment_status.replicas, by_name.get(name))
        current = AdapterAttachmentStatus.model_validate(item.body.get("status") or {})
        generation = item.body["metadata"].get("generation")
        if key_secrets is None:
            key_secret = current.api_key_secret_ref.name if current.api_key_secret_ref else None
        else:
            key_secret = key_secrets.get(key_of(item.model))
        status = attachment_status(current, generation, name, item.verdict, item.source, serving, now, key_secret)
        write_status(client, item.body, status)
