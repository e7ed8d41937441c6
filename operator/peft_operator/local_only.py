"""file:// is for local mode only: in a cluster it would name files inside whatever container reads it."""

from __future__ import annotations

from .api import Scheme

LOCAL_ONLY = "file:// works only in local mode (peft-runtime local train); in a cluster use pvc:// or s3://"


def is_local_only(uri: str) -> bool:
    # A prefix test, not parse_uri: it also judges URIs no schema checked (a FineTuneJob's reported adapter).
    return uri.startswith(f"{Scheme.FILE.value}://")


def local_only_problems(uris: dict[str, str]) -> list[str]:
    """One 'field: message' line per field (field -> URI) that names a file:// location."""
    return [f"{field}: {LOCAL_ONLY}" for field, uri in uris.items() if is_local_only(uri)]
