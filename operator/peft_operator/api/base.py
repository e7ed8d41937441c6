"""Shared building blocks of the peft.dev/v1alpha1 API: the model base class, references, conditions."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "peft.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# RFC 1123 label: what Kubernetes requires of names that end up in labels, Services and DNS.
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_LABEL_RE = re.compile(DNS_LABEL_PATTERN)
SHA256_PATTERN = r"^[a-f0-9]{64}$"


class ApiModel(BaseModel):
    """Base of every API object: camelCase on the wire, unknown fields rejected, defaults validated."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
        use_enum_values=False,
    )

    def to_wire(self) -> dict[str, Any]:
        """The JSON-compatible dict as the Kubernetes API stores it (camelCase, unset fields left out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


SHA256_RE = re.compile(SHA256_PATTERN)


def _dns_label(value: str) -> str:
    if len(value) > 63 or not DNS_LABEL_RE.match(value):
        raise ValueError(
            f"'{value}' is not a DNS-1123 label: use at most 63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit (e.g. tenant-a)"
        )
    return value


def _sha256(value: str) -> str:
    if not SHA256_RE.match(value):
        raise ValueError(
            f"'{value}' is not a sha256 digest: give the 64 lowercase hex characters of "
            "`sha256sum manifest.json` for the adapter"
        )
    return value


# Patterns and lengths go to the CRD schema; pydantic runs the validators, whose messages say what to do.
DnsLabel = Annotated[
    str,
    Field(
        json_schema_extra={"minLength": 1, "maxLength": 63, "pattern": DNS_LABEL_PATTERN},
        description="A DNS-1123 label: lowercase letters, digits and '-', starting and ending alphanumeric.",
    ),
    AfterValidator(_dns_label),
]
Sha256 = Annotated[
    str,
    Field(json_schema_extra={"minLength": 64, "maxLength": 64, "pattern": SHA256_PATTERN}),
    AfterValidator(_sha256),
]


class SecretKeyRef(ApiModel):
    """A key of a Secret in the same namespace as the object that refers to it."""

    name: DnsLabel = Field(description="Name of the Secret, in the same namespace as this object.")
    key: str = Field(
        default="token",
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key inside the Secret whose value is used.",
    )


class SecretRef(ApiModel):
    """A whole Secret in the same namespace, exposed to the workload as environment variables."""

    name: DnsLabel = Field(
        description=(
            "Name of the Secret, in the same namespace as this object. For S3 it holds "
            "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and optionally AWS_ENDPOINT_URL, AWS_REGION."
        )
    )


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    """One aspect of the object's state, in the Kubernetes API conventions' shape."""

    type: str = Field(max_length=316, description="Type of condition in CamelCase, e.g. Ready, Succeeded.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        default="",
        max_length=1024,
        description="One CamelCase word: why the condition last changed.",
    )
    message: str = Field(default="", max_length=32768, description="A human-readable sentence with details.")
    last_transition_time: datetime | None = Field(
        default=None, description="When the condition last changed from one status to another."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation the condition was computed for."
    )


class ObjectMeta(ApiModel):
    """The part of metadata the API models read; everything else is passed through untouched."""

    model_config = ConfigDict(extra="allow")

    name: str | None = Field(default=None, description="Object name.")
    namespace: str | None = Field(default=None, description="Object namespace.")
    uid: str | None = Field(default=None, description="Object UID.")
    generation: int | None = Field(default=None, description="Spec generation.")
