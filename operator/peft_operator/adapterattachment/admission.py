"""Which attachments an AdapterDeployment accepts: a pure function of its `spec.attachments` policy, the
attachments that name it, and the labels of their namespaces (Gateway API's allowedRoutes, per namespace).

Deterministic, so every pass agrees with the last: attachments are taken oldest first (creation time, then
namespace and name), so a newcomer never displaces one that was accepted earlier."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..api import AdapterAttachment, AdapterDeployment
from ..api.adapterattachment import served_name
from ..api.adapterdeployment import AttachmentPolicy, AttachmentsFrom

ACCEPTED = "Accepted"
NOT_ALLOWED = "NotAllowedByDeployment"
QUOTA_EXCEEDED = "QuotaExceeded"
NAME_CONFLICT = "NameConflict"
NO_MATCHING_PARENT = "NoMatchingParent"
INVALID_SPEC = "InvalidSpec"

AttachmentKey = tuple[str, str]  # (namespace, name) of the AdapterAttachment


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str
    message: str


def key_of(attachment: AdapterAttachment) -> AttachmentKey:
    return attachment.metadata.namespace or "", attachment.metadata.name or ""


def namespace_allowed(
    policy: AttachmentPolicy, deployment_namespace: str, namespace: str, labels: Mapping[str, str]
) -> bool:
    if policy.from_ is AttachmentsFrom.ALL or namespace == deployment_namespace:
        return True  # like Gateway API, the deployment's own namespace is always allowed
    if policy.from_ is AttachmentsFrom.SELECTOR:
        assert policy.selector is not None  # the policy's rule
        return policy.selector.matches(labels)
    return False


def _refusal_for_namespace(policy: AttachmentPolicy, deployment: str, namespace: str) -> str:
    if policy.from_ is AttachmentsFrom.SAME:
        why = "takes attachments from its own namespace only (spec.attachments.from: Same)"
    else:
        why = "takes attachments only from namespaces matching spec.attachments.selector"
    return (
        f"AdapterDeployment {deployment} {why}; namespace {namespace} is not allowed. Ask the platform team to "
        "allow it (spec.attachments on the AdapterDeployment, or a label on this namespace)."
    )


def _creation_order(attachment: AdapterAttachment) -> tuple[str, str, str]:
    created = (attachment.metadata.model_extra or {}).get("creationTimestamp") or ""
    namespace, name = key_of(attachment)
    return str(created), namespace, name


def admit(
    deployment: AdapterDeployment,
    attachments: Sequence[AdapterAttachment],
    namespace_labels: Mapping[str, Mapping[str, str]],
    reserved: frozenset[str] = frozenset(),
) -> dict[AttachmentKey, Verdict]:
    """A verdict for every attachment: allowed namespace, under the namespace's quota and the deployment's
    `limits.maxAdapters` (its own adapters count first), and a served name no older attachment holds and
    that is not `reserved` (the base model's served name: hf://org/name is served as org/name)."""
    policy = deployment.spec.attachments
    home = deployment.metadata.namespace or ""
    label = f"{home}/{deployment.metadata.name}"
    room = deployment.spec.limits.max_adapters - len(deployment.spec.adapters)
    per_namespace: Counter[str] = Counter()
    taken: dict[str, str] = {}  # served name -> the attachment that holds it
    verdicts: dict[AttachmentKey, Verdict] = {}
    for attachment in sorted(attachments, key=_creation_order):
        key = key_of(attachment)
        namespace, name = key
        served = served_name(namespace, attachment.spec.name)
        if not namespace_allowed(policy, home, namespace, namespace_labels.get(namespace, {})):
            verdicts[key] = Verdict(False, NOT_ALLOWED, _refusal_for_namespace(policy, label, namespace))
        elif served in reserved:
            verdicts[key] = Verdict(
                False,
                NAME_CONFLICT,
                f"{served} is the served name of {label}'s base model; choose another spec.name.",
            )
        elif served in taken:
            verdicts[key] = Verdict(
                False,
                NAME_CONFLICT,
                f"AdapterAttachment {taken[served]} in this namespace already serves {served} on {label}; "
                "choose another spec.name.",
            )
        elif per_namespace[namespace] >= policy.max_per_namespace:
            verdicts[key] = Verdict(
                False,
                QUOTA_EXCEEDED,
                f"namespace {namespace} already holds {per_namespace[namespace]} adapters on {label} "
                f"(spec.attachments.maxPerNamespace: {policy.max_per_namespace}); delete one or ask the "
                "platform team for more.",
            )
        elif room <= 0:
            verdicts[key] = Verdict(
                False,
                QUOTA_EXCEEDED,
                f"AdapterDeployment {label} is full (limits.maxAdapters: {deployment.spec.limits.max_adapters}); "
                "ask the platform team to raise it.",
            )
        else:
            per_namespace[namespace] += 1
            room -= 1
            taken[served] = name
            verdicts[key] = Verdict(True, ACCEPTED, f"Attached to AdapterDeployment {label} as {served}.")
    return verdicts
