"""Resolve each adapter's source to a URI and digest; fineTuneJobRef only within the same namespace.

A FineTuneJob's adapter outlives the job: once served, its URI and digest are recorded in the
AdapterDeployment's status, and that record keeps it served after the job is deleted (tidying up finished
jobs never takes a tenant offline). Only removing the adapter from the spec unloads it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ..adapterattachment.parent import AttachedAdapter
from ..api import AdapterDeployment, FineTuneJobStatus, Phase
from ..api.adapterdeployment import AdapterSpec, AdapterStatus
from ..api.agent import SourceCredentials
from ..local_only import LOCAL_ONLY, is_local_only

# A FineTuneJob lookup by name in the AdapterDeployment's own namespace (None when it does not exist).
FineTuneJobLookup = Callable[[str], dict[str, Any] | None]


@dataclass(frozen=True)
class DesiredAdapter:
    """An adapter as the agents should have it, or why it cannot be loaded yet."""

    name: str
    uri: str | None = None
    sha256: str | None = None
    credentials_secret: str | None = None  # the Secret with S3 credentials for `uri`, if any
    fine_tune_job: str | None = None  # the FineTuneJob the adapter came from, if any
    waiting: str | None = None  # not loadable yet (FineTuneJob still running): Pending
    refused: str | None = None  # will not become loadable without a change: Failed
    source_gone: str | None = None  # loadable from the status record, but its FineTuneJob was deleted
    pinned: bool = False  # kept in the engine's memory, never evicted for another adapter
    # An attached adapter's credentials, read from the tenant's namespace: sent with its load request only.
    credentials: SourceCredentials | None = field(default=None, repr=False, compare=False)
    attached: bool = False  # from an AdapterAttachment: its trouble is the tenant's, not the deployment's

    @property
    def loadable(self) -> bool:
        return self.uri is not None and self.sha256 is not None


def _output_credentials(job: dict[str, Any]) -> str | None:
    """The Secret the job wrote its output with (spec.output.credentialsSecretRef): a private bucket is read
    with the same keys it was written with."""
    ref = ((job.get("spec") or {}).get("output") or {}).get("credentialsSecretRef") or {}
    name = ref.get("name")
    return name if isinstance(name, str) and name else None


def _from_job(adapter: AdapterSpec, job: dict[str, Any] | None, served: AdapterStatus | None) -> DesiredAdapter:
    assert adapter.source.fine_tune_job_ref is not None
    job_name = adapter.source.fine_tune_job_ref.name
    if job is None:
        if served is not None and served.fine_tune_job == job_name and served.uri and served.digest:
            gone = (
                f"FineTuneJob {job_name} was deleted; still serving the adapter it produced ({served.uri}, sha256 "
                f"{served.digest[:12]}). Remove {adapter.name} from spec.adapters to unload it."
            )
            return DesiredAdapter(
                adapter.name, uri=served.uri, sha256=served.digest, fine_tune_job=job_name, source_gone=gone
            )
        return DesiredAdapter(adapter.name, waiting=f"FineTuneJob {job_name} does not exist in this namespace yet.")
    status = FineTuneJobStatus.model_validate(job.get("status") or {})
    if status.phase is Phase.SUCCEEDED and status.adapter is not None:
        return DesiredAdapter(
            adapter.name,
            uri=status.adapter.uri,
            sha256=status.adapter.sha256,
            credentials_secret=_output_credentials(job),
            fine_tune_job=job_name,
        )
    if status.phase in (Phase.FAILED, Phase.CANCELLED):
        return DesiredAdapter(
            adapter.name, refused=f"FineTuneJob {job_name} is {status.phase.value}; it has no adapter."
        )
    phase = status.phase.value if status.phase else "Pending"
    return DesiredAdapter(adapter.name, waiting=f"Waiting for FineTuneJob {job_name} ({phase}) to succeed.")


def resolve_adapters(
    adep: AdapterDeployment, lookup: FineTuneJobLookup, served: dict[str, AdapterStatus] | None = None
) -> list[DesiredAdapter]:
    """`served`: the status's adapter records by name, which outlive a deleted FineTuneJob."""
    served = served or {}
    desired = []
    for adapter in adep.spec.adapters:
        source = adapter.source
        if source.uri is not None:
            secret = source.credentials_secret_ref.name if source.credentials_secret_ref else None
            resolved = DesiredAdapter(adapter.name, uri=source.uri, sha256=source.sha256, credentials_secret=secret)
        else:
            assert source.fine_tune_job_ref is not None
            resolved = _from_job(adapter, lookup(source.fine_tune_job_ref.name), served.get(adapter.name))
        if resolved.uri is not None and is_local_only(resolved.uri):
            # Never sent to an agent: a file:// path would read the engine container's own files.
            resolved = DesiredAdapter(adapter.name, refused=f"{resolved.uri}: {LOCAL_ONLY}")
        desired.append(replace(resolved, pinned=adapter.pinned))
    return desired


def attached_adapters(attached: list[AttachedAdapter]) -> list[DesiredAdapter]:
    """Adapters other namespaces attached (accepted, sources resolved), under their `<namespace>/<name>`."""
    return [
        DesiredAdapter(a.served_name, uri=a.uri, sha256=a.sha256, credentials=a.credentials, attached=True)
        for a in attached
    ]
