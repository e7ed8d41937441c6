"""Storage locations as URIs: one parser for the operator, the trainer and the adapter agent."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, Field


class Scheme(StrEnum):
    HF = "hf"  # hf://org/name: a Hugging Face Hub repository
    PVC = "pvc"  # pvc://claim/path: a PersistentVolumeClaim in the object's namespace
    S3 = "s3"  # s3://bucket/prefix: any S3-compatible object store
    CONFIGMAP = "configmap"  # configmap://name/key: a small dataset in a ConfigMap
    FILE = "file"  # file:///abs/path: local mode only (no cluster)


_URI_RE = re.compile(r"^(?P<scheme>[a-z0-9]+)://(?P<authority>[^/]*)(?P<path>/.*)?$")
_DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_S3_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_HF_PART_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class StorageUri:
    """A parsed URI: `authority` is the org, claim, bucket or ConfigMap; `path` has no leading '/'."""

    scheme: Scheme
    authority: str
    path: str

    def __str__(self) -> str:
        suffix = f"/{self.path}" if self.path else ""
        return f"{self.scheme.value}://{self.authority}{suffix}"

    def join(self, *parts: str) -> StorageUri:
        joined = "/".join(p.strip("/") for p in (self.path, *parts) if p.strip("/"))
        return StorageUri(self.scheme, self.authority, joined)


def parse_uri(uri: str, allowed: frozenset[Scheme] = frozenset(Scheme)) -> StorageUri:
    """Parse and check a storage URI; the error says which schemes would have been accepted."""
    expected = ", ".join(f"{s.value}://" for s in Scheme if s in allowed)
    match = _URI_RE.match(uri)
    if match is None:
        raise ValueError(f"'{uri}' is not a URI; write it as one of {expected}")
    try:
        scheme = Scheme(match["scheme"])
    except ValueError:
        raise ValueError(f"scheme '{match['scheme']}://' is not supported here; use one of {expected}") from None
    if scheme not in allowed:
        raise ValueError(f"scheme '{scheme.value}://' is not supported here; use one of {expected}")
    authority, path = match["authority"], (match["path"] or "").strip("/")
    if ".." in path.split("/"):
        raise ValueError(f"'{uri}' contains '..'; paths may not leave their volume or bucket")
    _check_parts(scheme, authority, path, uri)
    return StorageUri(scheme, authority, path)


def _check_parts(scheme: Scheme, authority: str, path: str, uri: str) -> None:
    if scheme is Scheme.FILE:
        if authority:
            raise ValueError(f"'{uri}' must be an absolute path: file:///path/to/dir (three slashes)")
        if not path:
            raise ValueError(f"'{uri}' has no path; write file:///path/to/dir")
        return
    if not authority:
        raise ValueError(f"'{uri}' has nothing after '{scheme.value}://'")
    if scheme is Scheme.HF:
        if not (_HF_PART_RE.match(authority) and path and all(_HF_PART_RE.match(p) for p in path.split("/"))):
            raise ValueError(f"'{uri}' is not a Hub repository; write hf://org/name")
    elif scheme is Scheme.S3:
        if not _S3_BUCKET_RE.match(authority):
            raise ValueError(f"'{authority}' in '{uri}' is not a valid S3 bucket name (3-63 lowercase chars)")
    elif scheme in (Scheme.PVC, Scheme.CONFIGMAP):
        if not _DNS_SUBDOMAIN_RE.match(authority) or len(authority) > 253:
            raise ValueError(f"'{authority}' in '{uri}' is not a valid Kubernetes object name")
        if scheme is Scheme.CONFIGMAP and (not path or "/" in path):
            raise ValueError(f"'{uri}' must name one key: configmap://<name>/<key>")


def _accepting(*schemes: Scheme) -> tuple[Field, AfterValidator]:  # type: ignore[valid-type]
    allowed = frozenset(schemes)
    alternatives = "|".join(s.value for s in Scheme if s in allowed)

    def check(value: str) -> str:
        parse_uri(value, allowed)
        return value

    # The pattern goes to the CRD only; pydantic runs `check`, whose message names the accepted schemes.
    field = Field(max_length=1024, json_schema_extra={"pattern": rf"^({alternatives})://.+$"})
    return field, AfterValidator(check)


ModelUri = Annotated[str, *_accepting(Scheme.HF, Scheme.PVC, Scheme.S3, Scheme.FILE)]
DatasetUri = Annotated[str, *_accepting(Scheme.HF, Scheme.PVC, Scheme.S3, Scheme.CONFIGMAP, Scheme.FILE)]
OutputUri = Annotated[str, *_accepting(Scheme.PVC, Scheme.S3, Scheme.FILE)]
AdapterUri = Annotated[str, *_accepting(Scheme.HF, Scheme.PVC, Scheme.S3, Scheme.FILE)]
