"""API keys at the engine gate (AdapterDeployment `access.apiKeys: Required`): each key grants exactly the
models it was issued for. The gate knows keys only by their sha256, from the keyring file the adapter agent
writes when the operator sends it (PUT /v1/keyring); it rereads the file whenever it changes, so a revoked key
stops working on the next request after the operator's pass.

A key is looked up by its sha256: how long the lookup takes depends on the digest, never on how much of a key
an attacker guessed right (finding a key from its digest is a preimage attack on sha256)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from peft_operator.api.agent import Keyring, key_digest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Denial:
    """Why a request may not go on: an HTTP status and OpenAI error type with our reason and a sentence."""

    status: int
    type: str
    reason: str
    message: str


MISSING_KEY = Denial(
    401,
    "AuthenticationError",
    "MissingApiKey",
    "this deployment requires an API key: send `Authorization: Bearer <key>` (the apiKey in the Secret your "
    "AdapterAttachment's status.apiKeySecretRef names; with the openai client, api_key=<key>)",
)
UNKNOWN_KEY = Denial(
    401,
    "AuthenticationError",
    "InvalidApiKey",
    "the API key is not valid here: it was never issued for this deployment, or it was revoked (its "
    "AdapterAttachment or Secret was deleted); read the current apiKey from your Secret",
)
NO_KEYRING = Denial(
    503,
    "ServiceUnavailableError",
    "KeyringNotLoaded",
    "this engine has not received its API keys from the operator yet; retry shortly",
)


@dataclass(frozen=True)
class Grants:
    """sha256(key) -> the models that key may call."""

    by_digest: dict[str, frozenset[str]]

    @classmethod
    def of(cls, keyring: Keyring) -> Grants:
        grants: dict[str, frozenset[str]] = {}
        for grant in keyring.keys:
            grants[grant.sha256] = grants.get(grant.sha256, frozenset()) | frozenset(grant.models)
        return cls(grants)

    def models(self, key: str | None) -> frozenset[str] | Denial:
        """The models `key` may call, or why it may call none."""
        if not key:
            return MISSING_KEY
        granted = self.by_digest.get(key_digest(key))
        return UNKNOWN_KEY if granted is None else granted


def bearer_key(authorization: str | None) -> str | None:
    """The key of an `Authorization: Bearer <key>` header (the scheme is case-insensitive, RFC 9110 11.1)."""
    if not authorization:
        return None
    scheme, _, key = authorization.strip().partition(" ")
    return key.strip() or None if scheme.lower() == "bearer" else None


def not_granted(model: str, granted: frozenset[str]) -> Denial:
    allowed = ", ".join(sorted(granted)) or "none"
    return Denial(
        403,
        "PermissionDeniedError",
        "ModelNotGranted",
        f"this API key does not grant model '{model}'; it grants: {allowed}",
    )


class KeyringFile:
    """The keyring the agent writes (atomically: a rename), reread when its inode, size or mtime changes. A
    missing or unreadable file means no key is valid: the gate fails closed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._grants: Grants | None = None

    def grants(self) -> Grants | None:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            self._stamp, self._grants = None, None
            return None
        stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if stamp != self._stamp:
            try:
                self._grants = Grants.of(Keyring.model_validate(json.loads(self.path.read_bytes())))
            except (OSError, ValueError) as error:
                log.error("Keyring %s is unreadable, refusing every key until it is rewritten: %s", self.path, error)
                self._grants = None
            else:
                log.info("Keyring %s loaded: %d keys", self.path, len(self._grants.by_digest))
            self._stamp = stamp
        return self._grants
