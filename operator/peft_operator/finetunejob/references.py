"""The Secrets a FineTuneJob refers to must exist, with their keys, before any child is created: a missing
one is a Pending reason the user can act on (and that clears itself once the Secret is there), not a pod
that the kubelet fails minutes later."""

from __future__ import annotations

from collections.abc import Callable

from ..api import FineTuneJob, Phase
from .status import Verdict

# Secret name -> the keys it holds, or None when there is no such Secret in the job's namespace.
SecretLookup = Callable[[str], frozenset[str] | None]


def secret_references(job: FineTuneJob) -> list[tuple[str, str, str | None]]:
    """(field, Secret name, key or None for the whole Secret) for every Secret the spec names."""
    spec = job.spec
    refs: list[tuple[str, str, str | None]] = []
    if spec.base_model.token_secret_ref is not None:
        token = spec.base_model.token_secret_ref
        refs.append(("spec.baseModel.tokenSecretRef", token.name, token.key))
    for field, ref in (
        ("spec.baseModel.credentialsSecretRef", spec.base_model.credentials_secret_ref),
        ("spec.dataset.credentialsSecretRef", spec.dataset.credentials_secret_ref),
        ("spec.output.credentialsSecretRef", spec.output.credentials_secret_ref),
    ):
        if ref is not None:
            refs.append((field, ref.name, None))
    return refs


def missing_secret(job: FineTuneJob, lookup: SecretLookup) -> Verdict | None:
    """Pending with SecretNotFound or SecretKeyNotFound for the first reference that cannot be met."""
    namespace = job.metadata.namespace
    for field, name, key in secret_references(job):
        keys = lookup(name)
        if keys is None:
            return Verdict(
                Phase.PENDING,
                "SecretNotFound",
                f"{field}: Secret {name} does not exist in namespace {namespace}; create it and the job starts.",
            )
        if key is not None and key not in keys:
            return Verdict(
                Phase.PENDING,
                "SecretKeyNotFound",
                f"{field}: Secret {name} has no key {key} (it has: {', '.join(sorted(keys)) or 'none'}); "
                "add the key and the job starts.",
            )
    return None
