"""Resolve an attachment's source in the TENANT's namespace: its FineTuneJob (succeeded, with an adapter)
or its URI, and the Secret with its storage credentials. Pure: the lookups are handed in.

Only s3:// and hf:// sources can be attached from another namespace. A pvc:// URI would be resolved by the
engine pod, in the platform's namespace, against the platform's volumes (a confused deputy: a tenant could
read a claim it has no access to); file:// reads the engine container's own files. Both are refused."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ..api import FineTuneJobStatus, Phase, Scheme, parse_uri
from ..api.adapterattachment import AdapterAttachmentSpec
from ..api.agent import CREDENTIAL_KEYS, SourceCredentials

RESOLVED = "ResolvedRefs"
REF_NOT_FOUND = "RefNotFound"
REF_NOT_READY = "RefNotReady"
REF_NOT_PERMITTED = "RefNotPermitted"
REF_NOT_VALID = "RefNotValid"
ATTACHABLE_SCHEMES = (Scheme.S3, Scheme.HF)

FineTuneJobLookup = Callable[[str], dict[str, Any] | None]  # by name, in the attachment's namespace
SecretKeysLookup = Callable[[str], frozenset[str] | None]  # the keys of a Secret there, None if absent


@dataclass(frozen=True)
class ResolvedSource:
    """Where the adapter is and which Secret of the tenant opens it; or why the references do not resolve."""

    reason: str
    message: str
    uri: str | None = None
    sha256: str | None = None
    credentials_secret: str | None = None  # a Secret in the attachment's namespace

    @property
    def resolved(self) -> bool:
        return self.reason == RESOLVED


def _from_job(job_name: str, job: dict[str, Any] | None) -> ResolvedSource | tuple[str, str, str | None]:
    if job is None:
        return ResolvedSource(REF_NOT_FOUND, f"FineTuneJob {job_name} does not exist in this namespace.")
    status = FineTuneJobStatus.model_validate(job.get("status") or {})
    if status.phase is Phase.SUCCEEDED and status.adapter is not None:
        ref = ((job.get("spec") or {}).get("output") or {}).get("credentialsSecretRef") or {}
        return status.adapter.uri, status.adapter.sha256, ref.get("name") or None
    phase = status.phase.value if status.phase else "Pending"
    if status.phase in (Phase.FAILED, Phase.CANCELLED):
        return ResolvedSource(REF_NOT_READY, f"FineTuneJob {job_name} is {phase}: it has no adapter; train again.")
    return ResolvedSource(REF_NOT_READY, f"Waiting for FineTuneJob {job_name} ({phase}) to succeed.")


def resolve_source(
    spec: AdapterAttachmentSpec, jobs: FineTuneJobLookup, secret_keys: SecretKeysLookup
) -> ResolvedSource:
    source = spec.source
    if source.fine_tune_job_ref is not None:
        found = _from_job(source.fine_tune_job_ref.name, jobs(source.fine_tune_job_ref.name))
        if isinstance(found, ResolvedSource):
            return found
        uri, sha256, secret = found
        where = f"FineTuneJob {source.fine_tune_job_ref.name}'s adapter {uri}"
    else:
        assert source.uri is not None and source.sha256 is not None  # the source's rules
        uri, sha256 = source.uri, source.sha256
        secret = source.credentials_secret_ref.name if source.credentials_secret_ref else None
        where = f"spec.source.uri {uri}"
    if parse_uri(uri).scheme not in ATTACHABLE_SCHEMES:
        return ResolvedSource(
            REF_NOT_PERMITTED,
            f"{where}: an attached adapter must come from s3:// or hf:// (pvc:// and file:// would be read from "
            "the engine's namespace, not this one); write the adapter to a bucket this namespace's Secret opens.",
        )
    if secret is not None:
        keys = secret_keys(secret)
        if keys is None:
            return ResolvedSource(
                REF_NOT_FOUND, f"Secret {secret} (credentials for {uri}) does not exist in this namespace."
            )
        if not keys & set(CREDENTIAL_KEYS):
            return ResolvedSource(
                REF_NOT_FOUND,
                f"Secret {secret} (credentials for {uri}) has none of the keys {', '.join(CREDENTIAL_KEYS)}.",
            )
    return ResolvedSource(RESOLVED, f"{where} resolved.", uri=uri, sha256=sha256, credentials_secret=secret)


def credentials_from(secret: str, data: Mapping[str, str]) -> SourceCredentials | ResolvedSource:
    """The credential keys of the tenant's Secret, or why they cannot be used. The message names the keys and
    what is wrong, never a value; a tenant's odd Secret refuses its own attachment and nobody else's."""
    try:
        return SourceCredentials.model_validate({k: v for k, v in data.items() if k in CREDENTIAL_KEYS and v})
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        return ResolvedSource(REF_NOT_VALID, f"Secret {secret}: {problems}; fix the Secret.")
