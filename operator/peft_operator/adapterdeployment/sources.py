"""Resolve each adapter's source to a URI and digest; fineTuneJobRef only within the same namespace."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..api import AdapterDeployment, FineTuneJobStatus, Phase

# A FineTuneJob lookup by name in the AdapterDeployment's own namespace (None when it does not exist).
FineTuneJobLookup = Callable[[str], dict[str, Any] | None]


@dataclass(frozen=True)
class DesiredAdapter:
    """An adapter as the agents should have it, or why it cannot be loaded yet."""

    name: str
    uri: str | None = None
    sha256: str | None = None
    credentials_secret: str | None = None  # the Secret with S3 credentials for `uri`, if any
    waiting: str | None = None  # not loadable yet (FineTuneJob still running): Pending
    refused: str | None = None  # will not become loadable without a change: Failed

    @property
    def loadable(self) -> bool:
        return self.uri is not None and self.sha256 is not None


def resolve_adapters(adep: AdapterDeployment, lookup: FineTuneJobLookup) -> list[DesiredAdapter]:
    desired = []
    for adapter in adep.spec.adapters:
        source = adapter.source
        if source.uri is not None:
            secret = source.credentials_secret_ref.name if source.credentials_secret_ref else None
            desired.append(
                DesiredAdapter(adapter.name, uri=source.uri, sha256=source.sha256, credentials_secret=secret)
            )
            continue
        assert source.fine_tune_job_ref is not None
        job_name = source.fine_tune_job_ref.name
        job = lookup(job_name)
        if job is None:
            desired.append(
                DesiredAdapter(adapter.name, waiting=f"FineTuneJob {job_name} does not exist in this namespace yet.")
            )
            continue
        status = FineTuneJobStatus.model_validate(job.get("status") or {})
        if status.phase is Phase.SUCCEEDED and status.adapter is not None:
            desired.append(DesiredAdapter(adapter.name, uri=status.adapter.uri, sha256=status.adapter.sha256))
        elif status.phase in (Phase.FAILED, Phase.CANCELLED):
            desired.append(
                DesiredAdapter(
                    adapter.name, refused=f"FineTuneJob {job_name} is {status.phase.value}; it has no adapter."
                )
            )
        else:
            phase = status.phase.value if status.phase else "Pending"
            desired.append(
                DesiredAdapter(adapter.name, waiting=f"Waiting for FineTuneJob {job_name} ({phase}) to succeed.")
            )
    return desired
