"""The attachment's own pass: what only the attachment can tell. An invalid spec is InvalidSpec; an
AdapterDeployment that does not exist is NoMatchingParent (Gateway API's word). Everything else (accepted
or not, resolved, loaded) is decided and reported by the AdapterDeployment's pass (`parent.py`), which the
handlers run whenever an attachment changes."""

from __future__ import annotations

from datetime import UTC, datetime

from kubernetes.client import ApiClient

from .. import kube
from ..api import AdapterAttachment, AdapterAttachmentStatus, AdapterDeployment
from ..api.adapterattachment import served_name
from ..api.validation import SpecError, parse_object
from .admission import INVALID_SPEC, NO_MATCHING_PARENT, Verdict
from .parent import write_status
from .status import attachment_status

# Attachments whose AdapterDeployment went away learn it within this many seconds.
RESYNC_SECONDS = 30.0


def wants_resync(_body: dict[str, object]) -> bool:
    return True


def reconcile_adapterattachment(client: ApiClient, namespace: str, name: str) -> None:
    body = kube.get_custom(client, AdapterAttachment.PLURAL, namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return
    spec = body.get("spec") or {}
    try:
        attachment = parse_object(AdapterAttachment, body)
    except SpecError as error:
        verdict = Verdict(False, INVALID_SPEC, "; ".join(error.problems))
        served = served_name(namespace, str(spec.get("name", "")))
    else:
        ref = attachment.spec.adapter_deployment_ref
        parent = kube.get_custom(client, AdapterDeployment.PLURAL, ref.namespace, ref.name)
        if parent is not None and not parent["metadata"].get("deletionTimestamp"):
            return  # the AdapterDeployment's pass reports on it
        verdict = Verdict(
            False,
            NO_MATCHING_PARENT,
            f"AdapterDeployment {ref.namespace}/{ref.name} does not exist; check spec.adapterDeploymentRef.",
        )
        served = served_name(namespace, attachment.spec.name)
    current = AdapterAttachmentStatus.model_validate(body.get("status") or {})
    status = attachment_status(
        current, body["metadata"].get("generation"), served, verdict, None, None, datetime.now(UTC)
    )
    write_status(client, body, status)
