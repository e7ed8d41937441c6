"""Training's storage: the dataset's files and the base model (read through common/storage.py, failures
as the trainer's reasons), and the output location.

An s3:// output is trained into a local directory and uploaded: a checkpoint or an adapter is complete on
S3 only once its marker object (uploaded last) exists.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from peft_operator.api.plan import DATASET_CREDENTIALS_PREFIX, OUTPUT_CREDENTIALS_PREFIX, Mounts
from peft_operator.api.uris import Scheme, StorageUri, parse_uri

from ..common.storage import (
    StorageError,
    download_s3,
    fetch_model_dir,
    hf_snapshot,
    local_path,
    s3_client,
    s3_keys,
)
from .errors import dataset_invalid, model_unavailable, storage_error

log = logging.getLogger(__name__)

DATA_SUFFIXES = (".jsonl", ".parquet")


# ------------------------------------------------------------------------------------------ inputs


def dataset_files(uri: str, mounts: Mounts, work_dir: Path) -> list[Path]:
    """The local JSON Lines / Parquet files of a dataset URI (a folder means every such file in it)."""
    parsed = parse_uri(uri)
    try:
        if parsed.scheme is Scheme.S3:
            location = download_s3(parsed, work_dir / "dataset", DATASET_CREDENTIALS_PREFIX)
        elif parsed.scheme is Scheme.HF:
            location = hf_snapshot(parsed, repo_type="dataset", revision=None, allow_patterns=None)
        else:
            location = local_path(parsed, mounts)
    except StorageError as error:
        raise storage_error(str(error)) from error
    except Exception as error:
        raise dataset_invalid(f"cannot read dataset {uri}: {error}") from error
    if location.is_file():
        return [location]
    if not location.is_dir():
        raise dataset_invalid(f"dataset {uri} does not exist (looked at {location})")
    files = sorted(
        p
        for p in location.rglob("*")
        if p.is_file() and p.suffix in DATA_SUFFIXES and not any(part.startswith(".") for part in p.parts)
    )
    if not files:
        raise dataset_invalid(f"dataset {uri} has no .jsonl or .parquet files")
    return files


def model_dir(uri: str, revision: str | None, mounts: Mounts, work_dir: Path, *, weights: bool = True) -> Path:
    """A local directory with the base model's config, tokenizer and (unless `weights` is False) weights."""
    try:
        return fetch_model_dir(uri, revision, mounts, work_dir, weights=weights)
    except StorageError as error:
        raise model_unavailable(str(error)) from error


# ------------------------------------------------------------------------------------------ output


class OutputLocation:
    """Where the adapter and its checkpoints go. Training always writes into `local_dir`."""

    def __init__(self, uri: str, local_dir: Path):
        self.uri = uri
        self.local_dir = local_dir

    def check_writable(self) -> None:
        try:
            self.local_dir.mkdir(parents=True, exist_ok=True)
            probe = self.local_dir / ".write-probe"
            probe.write_text("ok")
            probe.unlink()
        except OSError as error:
            raise storage_error(f"cannot write to {self.uri} ({self.local_dir}): {error}") from error

    def publish(self, relative_paths: list[str], marker: str | None = None) -> None:
        """Make local files visible at the output URI, `marker` last (no-op for a local output)."""

    def remote_dirs(self, relative_dir: str) -> list[str]:
        """Names of the sub-folders of `relative_dir` that exist only remotely (none for a local output)."""
        return []

    def has_remote(self, relative_path: str) -> bool:
        return False

    def fetch(self, relative_dir: str) -> None:
        """Copy a remote folder into local_dir (no-op for a local output)."""

    def delete(self, relative_dir: str, marker: str | None = None) -> None:
        """Remove a folder, `marker` first so that a half-deleted folder is never taken as complete."""
        shutil.rmtree(self.local_dir / relative_dir, ignore_errors=True)


class S3Output(OutputLocation):
    def __init__(self, uri: str, parsed: StorageUri, local_dir: Path):
        super().__init__(uri, local_dir)
        self.bucket = parsed.authority
        self.prefix = parsed.path
        self.client = s3_client(OUTPUT_CREDENTIALS_PREFIX)

    def _key(self, relative_path: str) -> str:
        return "/".join(p for p in (self.prefix, relative_path) if p)

    def check_writable(self) -> None:
        super().check_writable()
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as error:
            raise storage_error(
                f"cannot reach bucket {self.bucket} for {self.uri}: {error}; check credentials and AWS_ENDPOINT_URL"
            ) from error

    def publish(self, relative_paths: list[str], marker: str | None = None) -> None:
        ordered = [p for p in relative_paths if p != marker] + ([marker] if marker else [])
        try:
            for relative in ordered:
                self.client.upload_file(str(self.local_dir / relative), self.bucket, self._key(relative))
        except Exception as error:
            raise storage_error(f"cannot upload to {self.uri}: {error}") from error

    def remote_dirs(self, relative_dir: str) -> list[str]:
        prefix = self._key(relative_dir) + "/"
        names: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix, Delimiter="/"
        ):
            names.extend(p["Prefix"][len(prefix) :].rstrip("/") for p in page.get("CommonPrefixes", []))
        return names

    def has_remote(self, relative_path: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(relative_path))
            return True
        except Exception:
            return False

    def fetch(self, relative_dir: str) -> None:
        try:
            download_s3(
                StorageUri(Scheme.S3, self.bucket, self._key(relative_dir)),
                self.local_dir / relative_dir,
                OUTPUT_CREDENTIALS_PREFIX,
            )
        except StorageError as error:
            raise storage_error(str(error)) from error

    def delete(self, relative_dir: str, marker: str | None = None) -> None:
        super().delete(relative_dir, marker)
        prefix = self._key(relative_dir) + "/"
        keys = s3_keys(self.client, self.bucket, prefix)
        if marker and prefix + marker in keys:
            keys.remove(prefix + marker)
            keys.insert(0, prefix + marker)
        for key in keys:
            self.client.delete_object(Bucket=self.bucket, Key=key)


def output_location(uri: str, mounts: Mounts, work_dir: Path) -> OutputLocation:
    parsed = parse_uri(uri)
    if parsed.scheme is Scheme.S3:
        return S3Output(uri, parsed, work_dir / "output")
    try:
        return OutputLocation(uri, local_path(parsed, mounts))
    except StorageError as error:
        raise storage_error(str(error)) from error
