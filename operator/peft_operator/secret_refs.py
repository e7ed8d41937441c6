"""Secrets a spec names must exist, with their keys, before anything that reads them is created: a missing
one is a reason the user can act on (and that clears by itself once the Secret is there), never a pod the
kubelet fails minutes later nor a retry loop. Shared by both controllers."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

# Secret name -> the keys it holds, or None when there is no such Secret in the object's namespace.
SecretLookup = Callable[[str], frozenset[str] | None]


@dataclass(frozen=True)
class SecretReference:
    field: str  # where the spec names it, e.g. spec.tokenSecretRef
    name: str
    key: str | None  # None: the whole Secret (environment from it)


@dataclass(frozen=True)
class MissingSecret:
    reason: str  # SecretNotFound or SecretKeyNotFound
    message: str


def first_missing(
    references: Iterable[SecretReference], namespace: str | None, lookup: SecretLookup, then: str
) -> MissingSecret | None:
    """The first reference that cannot be met; `then` says what happens once it is fixed."""
    for ref in references:
        keys = lookup(ref.name)
        if keys is None:
            return MissingSecret(
                "SecretNotFound",
                f"{ref.field}: Secret {ref.name} does not exist in namespace {namespace}; create it and {then}.",
            )
        if ref.key is not None and ref.key not in keys:
            return MissingSecret(
                "SecretKeyNotFound",
                f"{ref.field}: Secret {ref.name} has no key {ref.key} (it has: {', '.join(sorted(keys)) or 'none'}); "
                f"add the key and {then}.",
            )
    return None
