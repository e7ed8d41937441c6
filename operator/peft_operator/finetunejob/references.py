"""The Secrets a FineTuneJob refers to must exist, with their keys, before any child is created (else
Pending with SecretNotFound / SecretKeyNotFound, re-checked by the resync); the claims a multi-node job mounts
should be mountable from several nodes (a Warning when they are not)."""

from __future__ import annotations

from collections.abc import Callable

from ..api import FineTuneJob, Phase, Scheme
from ..secret_refs import SecretLookup, SecretReference, first_missing
from .job import storage_uris
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


# Access modes that let pods on several nodes mount a claim: to write (the output), or only to read.
SHARED_WRITABLE = frozenset({"ReadWriteMany"})
SHARED_READABLE = frozenset({"ReadWriteMany", "ReadOnlyMany"})


def unshared_claims(job: FineTuneJob, access_modes_of: Callable[[str], list[str] | None]) -> list[str]:
    """For a job whose pods may run on several nodes (resources.nodes above 1): why each pvc:// claim it
    mounts may not mount on all of them. A warning, not a refusal: pods placed on one node (a single-node
    cluster, or a scheduler that packs them) do share a ReadWriteOnce claim."""
    spec = job.spec
    if spec.resources.nodes == 1:
        return []
    writes: dict[str, bool] = {}
    for parsed, is_output in storage_uris(job):
        if parsed.scheme is Scheme.PVC:
            writes[parsed.authority] = writes.get(parsed.authority, False) or is_output
    problems = []
    for claim, writable in writes.items():
        modes = access_modes_of(claim)
        needed = SHARED_WRITABLE if writable else SHARED_READABLE
        if modes is None or needed & set(modes):
            continue  # a missing claim keeps the pods Pending, and the kubelet's Events say so
        problems.append(
            f"claim {claim} is {', '.join(modes) or 'without access modes'}: the {spec.resources.nodes} pods of "
            f"this job can mount it only if they all run on one node; use a {' or '.join(sorted(needed))} claim "
            "(or s3://) for a job across nodes"
        )
    return problems
