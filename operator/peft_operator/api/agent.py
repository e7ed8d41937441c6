"""The adapter agent's HTTP API as pydantic models: the agent serves it, the operator's client speaks it.

A wire contract like the plan and the manifest, so it lives in the API package: pydantic only, imported by
the agent (runtime) and the operator's client alike. Every route but /health needs `Authorization: Bearer <token>`.

    PUT    /v1/adapters/{name}  LoadAdapterRequest -> 200 AdapterReport (loaded, or already loaded: a no-op)
    DELETE /v1/adapters/{name}                    -> 200 UnloadReport (idempotent: absent is not an error)
    GET    /v1/adapters                           -> 200 AdapterList (what the ENGINE holds, plus failures)
    GET    /v1/adapters/{name}                    -> 200 AdapterReport, 404 when the agent knows nothing of it
    PUT    /v1/keyring  Keyring                   -> 200 KeyringReport (access.apiKeys: Required; 404 otherwise)
    GET    /health                                -> 200 {"status": "ok"} (no token)

Errors are `ErrorBody` JSON with a CamelCase `reason` (a `Reason` value) that the operator copies into the
AdapterDeployment status, and a sentence in `message`:

    400 BadRequest, UnsupportedMethod      401 Unauthorized
    403 AdminDisabled (no token configured), SourceNotAllowed (outside the agent's roots; file:// in a cluster)
    404 AdapterNotFound, SourceNotFound    409 NameConflict
    422 ChecksumMismatch, AdapterCorrupt, IncompatibleBaseModel, RankTooLarge, EngineRejected
    502 EngineUnavailable, SourceUnavailable                      507 TooManyAdapters, InsufficientStorage
"""

from __future__ import annotations

import hashlib
import re
from enum import StrEnum

from pydantic import Field, SecretStr, field_serializer

from .adapterdeployment import AdapterState
from .base import ApiModel, Sha256
from .uris import AdapterUri

ADAPTERS_PATH = "/v1/adapters"
KEYRING_PATH = "/v1/keyring"
HEALTH_PATH = "/health"
SHA256_DIR_RE = re.compile(r"^[a-f0-9]{64}$")


def adapter_path(name: str) -> str:
    """The URL path of one adapter, e.g. /v1/adapters/support-bot."""
    return f"{ADAPTERS_PATH}/{name}"


class Reason(StrEnum):
    """Why a request failed: one CamelCase word, shared by the agent and the built-in engine."""

    BAD_REQUEST = "BadRequest"  # malformed body, name or URI
    UNAUTHORIZED = "Unauthorized"  # missing or wrong bearer token
    ADMIN_DISABLED = "AdminDisabled"  # the server was started without a token: admin routes are off
    MODEL_NOT_FOUND = "ModelNotFound"  # `model` names neither the base model nor a loaded adapter
    ADAPTER_NOT_FOUND = "AdapterNotFound"  # no adapter of that name
    SOURCE_NOT_FOUND = "SourceNotFound"  # nothing at the adapter's URI
    SOURCE_NOT_ALLOWED = "SourceNotAllowed"  # a path outside the agent's roots, or file:// in a cluster
    SOURCE_UNAVAILABLE = "SourceUnavailable"  # the storage did not answer or refused the credentials
    CHECKSUM_MISMATCH = "ChecksumMismatch"  # manifest.json or a file does not have the expected sha256
    ADAPTER_CORRUPT = "AdapterCorrupt"  # unreadable files, no adapter_config.json, missing weights
    INCOMPATIBLE_BASE_MODEL = "IncompatibleBaseModel"  # trained on another base model / shapes differ
    RANK_TOO_LARGE = "RankTooLarge"  # rank above the engine's maxRank
    UNSUPPORTED_METHOD = "UnsupportedMethod"  # the engine cannot hot-load this PEFT method
    TOO_MANY_ADAPTERS = "TooManyAdapters"  # maxAdapters already loaded
    RESIDENT_SLOTS_BUSY = "ResidentSlotsBusy"  # every resident adapter stayed pinned or in use past the wait
    NAME_CONFLICT = "NameConflict"  # the adapter name is the base model's served name
    INSUFFICIENT_STORAGE = "InsufficientStorage"  # the shared volume is full
    ENGINE_REJECTED = "EngineRejected"  # the engine refused the load (its message says why)
    ENGINE_UNAVAILABLE = "EngineUnavailable"  # the engine did not answer, or failed with a 5xx
    INTERNAL_ERROR = "InternalError"


# The keys of a credentials Secret that a fetch reads (the same names as the environment variables).
CREDENTIAL_KEYS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "HF_TOKEN",
)


class SourceCredentials(ApiModel):
    """Storage credentials for ONE fetch: an attached adapter's Secret lives in the tenant's namespace, which
    the engine pod cannot mount, so the operator reads it and hands the values over in the request. The agent
    uses them for that download only and never stores or logs them; repr() shows `**********`."""

    aws_access_key_id: SecretStr | None = Field(default=None, alias="AWS_ACCESS_KEY_ID")
    aws_secret_access_key: SecretStr | None = Field(default=None, alias="AWS_SECRET_ACCESS_KEY")
    aws_session_token: SecretStr | None = Field(default=None, alias="AWS_SESSION_TOKEN")
    aws_region: str | None = Field(default=None, max_length=64, alias="AWS_REGION")
    aws_endpoint_url: str | None = Field(default=None, max_length=2048, alias="AWS_ENDPOINT_URL")
    hf_token: SecretStr | None = Field(default=None, alias="HF_TOKEN")

    @field_serializer("aws_access_key_id", "aws_secret_access_key", "aws_session_token", "hf_token", when_used="json")
    def _reveal_on_the_wire(self, value: SecretStr | None) -> str | None:
        return value.get_secret_value() if value is not None else None


class LoadAdapterRequest(ApiModel):
    """Body of PUT /v1/adapters/{name}. Credentials come from the agent's environment (AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, HF_TOKEN, or <prefix>AWS_* from the adapter's own Secret), or, for an
    adapter attached from another namespace, in `credentials` for this one fetch."""

    uri: AdapterUri = Field(description="s3://, pvc://, file:// or hf:// adapter directory.")
    sha256: Sha256 = Field(description="sha256 of the adapter's manifest.json; every file is checked against it.")
    pinned: bool = Field(default=False, description="Keep it in the engine's memory (built-in engine).")
    credentials_env_prefix: str | None = Field(
        default=None,
        max_length=128,
        pattern=r"^[A-Z0-9_]+$",
        description="Read S3 credentials from <prefix>AWS_* (the pod's env from this adapter's Secret).",
    )
    credentials: SourceCredentials | None = Field(
        default=None,
        description="Credentials for this fetch only (an attached adapter's Secret, read by the operator).",
    )


class AdapterReport(ApiModel):
    """One adapter as this replica sees it."""

    name: str
    state: AdapterState = Field(description="Loaded (the engine serves it), Loading, or Failed.")
    digest: str | None = Field(default=None, description="sha256 of the manifest being served (or attempted).")
    path: str | None = Field(default=None, description="Where the engine reads it: <adapter-root>/<name>/<digest>.")
    reason: str | None = Field(default=None, description="A Reason value when state is Failed.")
    message: str | None = None
    resident: bool | None = Field(default=None, description="In the engine's memory now (built-in engine only).")
    pinned: bool | None = Field(default=None, description="Never evicted (built-in engine only).")


class EngineInfo(ApiModel):
    url: str
    base_model: str | None = Field(default=None, description="The base model's served name.")
    engine: str = Field(description="builtin or vllm.")


class AdapterList(ApiModel):
    """GET /v1/adapters: Loaded entries come from the engine's /v1/models at the time of the request (an
    engine that restarted empty reports none); Loading and Failed entries are the agent's own, for names the
    engine does not hold."""

    engine: EngineInfo
    adapters: list[AdapterReport] = Field(default_factory=list)


class UnloadReport(ApiModel):
    name: str
    unloaded: bool = Field(description="True when the engine held the adapter and let it go.")
    removed_files: bool = Field(description="True when files were removed from the shared volume.")


def key_digest(key: str) -> str:
    """How the engine gate knows an API key: the lowercase hex sha256 of its text."""
    return hashlib.sha256(key.encode()).hexdigest()


class KeyGrant(ApiModel):
    """One API key, by the sha256 of its text only, and the models (`model` values) it may call."""

    sha256: Sha256 = Field(description="Lowercase hex sha256 of the key; the key itself never leaves its Secret.")
    models: list[str] = Field(max_length=8192, description="Served names: the base model's and adapters'.")


class Keyring(ApiModel):
    """Body of PUT /v1/keyring: every key the engine gate accepts. The agent writes it where the gate reads it,
    replacing the previous one whole, so a key missing here is revoked."""

    keys: list[KeyGrant] = Field(default_factory=list, max_length=8192)


class KeyringReport(ApiModel):
    keys: int = Field(ge=0, description="Keys the gate accepts now.")
    changed: bool = Field(description="False when the gate already had exactly this keyring.")


class ErrorDetail(ApiModel):
    reason: str = Field(description="A Reason value (CamelCase).")
    message: str


class ErrorBody(ApiModel):
    error: ErrorDetail
