"""Per-job bearer tokens for the trainer's progress sink: HMAC of the job's identity, nothing stored."""

from __future__ import annotations

import hashlib
import hmac


def progress_token(key: bytes, namespace: str, name: str, uid: str) -> str:
    message = f"{namespace}/{name}/{uid}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def token_is_valid(key: bytes, namespace: str, name: str, uid: str, presented: str) -> bool:
    return hmac.compare_digest(progress_token(key, namespace, name, uid), presented)
