"""Owner references: what the operator creates goes away with its owner (garbage collection, no finalizer)."""

from __future__ import annotations

from typing import Any

from .api import API_VERSION
from .api.base import ObjectMeta


def owner_reference(kind: str, metadata: ObjectMeta) -> dict[str, Any]:
    if metadata.name is None or metadata.uid is None:
        raise ValueError(f"{kind} has no name or uid yet; it must be read from the API server first")
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "name": metadata.name,
        "uid": metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
