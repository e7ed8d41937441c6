"""AdapterAttachment: a tenant, in its own namespace, attaches one adapter to a shared AdapterDeployment.

Gateway API's precedent: an HTTPRoute in an app team's namespace attaches to a Gateway in the platform's
namespace when the Gateway's `allowedRoutes` lets it. Here the AdapterDeployment's `spec.attachments` says
which namespaces may attach and how many adapters each may hold; the operator reports the verdict on the
attachment (Accepted, ResolvedRefs, Ready) in the tenant's namespace. The adapter is served under
`<namespace>/<name>`, so tenants cannot collide with, or pose as, each other."""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import Field

from .adapterdeployment import AdapterSource, AdapterState
from .base import ApiModel, Condition, DnsLabel, ObjectMeta, SecretRef
from .rules import Rule, RuledModel

# What clients send as `model`: a deployment's own adapters keep their plain name (a DNS label); an
# attached adapter is `<namespace>/<name>`, both DNS labels, so the two can never be equal.
SERVED_NAME_PATTERN = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
SERVED_NAME_RE = re.compile(SERVED_NAME_PATTERN)
MAX_SERVED_NAME_LENGTH = 63 + 1 + 63


def served_name(namespace: str, name: str) -> str:
    """The model name an attached adapter answers to, e.g. tenant-a/pirate."""
    return f"{namespace}/{name}"


def is_served_name(value: str) -> bool:
    parts = value.split("/")
    return (
        len(value) <= MAX_SERVED_NAME_LENGTH
        and SERVED_NAME_RE.match(value) is not None
        and all(len(p) <= 63 for p in parts)
    )


class AdapterDeploymentRef(ApiModel):
    """The shared AdapterDeployment to attach to (usually in the platform's namespace)."""

    namespace: DnsLabel = Field(description="Namespace of the AdapterDeployment.")
    name: DnsLabel = Field(description="Name of the AdapterDeployment.")


class AdapterAttachmentSpec(RuledModel):
    """One adapter of this namespace, served by a shared AdapterDeployment."""

    RULES = (
        Rule(
            "self.adapterDeploymentRef == oldSelf.adapterDeploymentRef",
            "spec.adapterDeploymentRef is immutable: create a new AdapterAttachment to attach elsewhere",
            None,
        ),
    )

    adapter_deployment_ref: AdapterDeploymentRef = Field(description="The AdapterDeployment to attach to.")
    name: DnsLabel = Field(description="The adapter's name in this namespace; clients send `<namespace>/<name>`.")
    source: AdapterSource = Field(
        description=(
            "fineTuneJobRef (a FineTuneJob in this namespace) or uri + sha256 (s3:// or hf://; "
            "credentialsSecretRef names a Secret in this namespace)."
        )
    )


class AdapterAttachmentStatus(ApiModel):
    """What is: written by the operator only."""

    conditions: list[Condition] = Field(default_factory=list, description="Accepted, ResolvedRefs, Ready.")
    observed_generation: int | None = None
    served_name: str | None = Field(default=None, description="The exact `model` to send, e.g. tenant-a/pirate.")
    endpoint: str | None = Field(default=None, description="OpenAI-compatible base URL of the AdapterDeployment.")
    state: AdapterState | None = Field(default=None, description="Pending, Loading, Loaded or Failed.")
    loaded_replicas: int = Field(default=0, ge=0, description="Replicas whose engine serves this adapter.")
    replicas: int = Field(default=0, ge=0, description="Replicas of the AdapterDeployment.")
    digest: str | None = Field(default=None, description="sha256 of the manifest being served.")
    message: str | None = Field(default=None, max_length=4096, description="Why it is not Loaded, when it is not.")
    api_key_secret_ref: SecretRef | None = Field(
        default=None,
        description=(
            "The Secret in this namespace whose `apiKey` calls this adapter, when the AdapterDeployment requires API "
            "keys (access.apiKeys: Required); owned by this attachment. Delete the Secret to rotate the key."
        ),
    )


class AdapterAttachment(ApiModel):
    """Attach one of this namespace's adapters to a shared AdapterDeployment (which must allow it)."""

    model_config = {"extra": "ignore"}
    KIND: ClassVar[str] = "AdapterAttachment"
    PLURAL: ClassVar[str] = "adapterattachments"
    SHORT_NAME: ClassVar[str] = "adat"
    # The operator lists the attachments of one AdapterDeployment with a field selector on these.
    SELECTABLE_FIELDS: ClassVar[tuple[str, ...]] = (
        ".spec.adapterDeploymentRef.namespace",
        ".spec.adapterDeploymentRef.name",
    )

    api_version: Literal["peft.dev/v1alpha1"] = "peft.dev/v1alpha1"
    kind: Literal["AdapterAttachment"] = "AdapterAttachment"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: AdapterAttachmentSpec
    status: AdapterAttachmentStatus | None = None
