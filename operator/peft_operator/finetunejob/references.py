"""The Secrets a FineTuneJob refers to must exist, with their keys, before any child is created (else
Pending with SecretNotFound / SecretKeyNotFound, re-checked by the resync)."""

from __future__ import annotations

from ..api import FineTuneJob, Phase
from ..secret_refs import SecretLookup, SecretReference, first_missing
from .status import Verdict


def secret_references(job: FineTuneJob) -> list[SecretReference]:
    """Every Secret the spec names (with the key, where one key is read)."""
    spec = job.spec
    refs: list[SecretReference] = []
    if spec.base_model.token_secret_ref is not None:
        token = spec.base_model.token_secret_ref
        refs.append(SecretReference("spec.baseModel.tokenSecretRef", token.name, token.key))
    for field, ref in (
        ("spec.baseModel.credentialsSecretRef", spec.base_model.credentials_secret_ref),
        ("spec.dataset.credentialsSecretRef", spec.dataset.credentials_secret_ref),
        ("spec.output.credentialsSecretRef", spec.output.credentials_secret_ref),
    ):
        if ref is not None:
            refs.append(SecretReference(field, ref.name, None))
    return refs


def missing_secret(job: FineTuneJob, lookup: SecretLookup) -> Verdict | None:
    """Pending with SecretNotFound or SecretKeyNotFound for the first reference that cannot be met."""
    missing = first_missing(secret_references(job), job.metadata.namespace, lookup, "the job starts")
    return Verdict(Phase.PENDING, missing.reason, missing.message) if missing is not None else None
