"""Where things are: storage URIs turned into local paths, downloads, and the output location.

- `file:///p` is `/p`; `pvc://claim/p` is `<mounts.pvcRoot>/claim/p`; `configmap://name/key` is
  `<mounts.configmapRoot>/name/key` (the Job mounts them there).
- `s3://bucket/key` is any S3-compatible store; boto3 reads credentials, region and the endpoint from the
  standard environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL).
- `hf://org/name` is a Hugging Face Hub repository (HF_TOKEN from the environment for private ones).

An s3:// output is trained into a local directory and uploaded: a checkpoint or an adapter is complete on
S3 only once its marker object (uploaded last) exists.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from peft_operator.api.plan import (
    DATASET_CREDENTIALS_PREFIX,
    MODEL_CREDENTIALS_PREFIX,
    OUTPUT_CREDENTIALS_PREFIX,
    Mounts,
)
from peft_operator.api.uris import Scheme, StorageUri, parse_uri

from .errors import TrainerError, dataset_invalid, model_unavailable, storage_error

log = logging.getLogger(__name__)

DATA_SUFFIXES = (".jsonl", ".parquet")
# What a model directory needs; weights in other formats (.bin, .pt) are not downloaded.
MODEL_FILE_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]


def local_path(uri: StorageUri, mounts: Mounts) -> Path:
    """The path where a file://, pvc:// or configmap:// URI appears on this machine."""
    if uri.scheme is Scheme.FILE:
        return Path("/" + uri.path)
    if uri.scheme is Scheme.PVC:
        if not mounts.pvc_root:
            raise storage_error(f"{uri} needs a mounted volume (plan.mounts.pvcRoot); in local mode use file://")
        return Path(mounts.pvc_root, uri.authority, uri.path)
    if uri.scheme is Scheme.CONFIGMAP:
        if not mounts.configmap_root:
            raise storage_error(
                f"{uri} needs a mounted ConfigMap (plan.mounts.configmapRoot); in local mode use file://"
            )
        return Path(mounts.configmap_root, uri.authority, uri.path)
    raise ValueError(f"{uri} is not a local or mounted location")


# ---------------------------------------------------------------------------------------------- S3


def s3_client(env_prefix: str = "") -> Any:
    """A boto3 S3 client configured from the environment; path-style addressing for custom endpoints.

    With `env_prefix` (the operator gives each credentials Secret its own, e.g. DATASET_), the
    `<prefix>AWS_*` variables win; whatever they leave unset comes from the standard AWS chain."""
    import boto3
    from botocore.config import Config

    def prefixed(name: str) -> str | None:
        return os.environ.get(env_prefix + name) if env_prefix else None

    endpoint = (
        prefixed("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    )
    config = Config(
        retries={"max_attempts": 5, "mode": "standard"},
        s3={"addressing_style": "path" if endpoint else "auto"},
    )
    return boto3.client(
        "s3",
        config=config,
        endpoint_url=prefixed("AWS_ENDPOINT_URL"),
        region_name=prefixed("AWS_REGION"),
        aws_access_key_id=prefixed("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=prefixed("AWS_SECRET_ACCESS_KEY"),
        aws_session_token=prefixed("AWS_SESSION_TOKEN"),
    )


def _s3_keys(client: Any, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(item["Key"] for item in page.get("Contents", []))
    return keys


def download_s3(uri: StorageUri, dest: Path, env_prefix: str = "") -> Path:
    """Download an object (returns its local file) or every object under a prefix (returns the folder)."""
    client = s3_client(env_prefix)
    try:
        if uri.path and not uri.path.endswith("/"):
            keys = _s3_keys(client, uri.authority, uri.path)
            if uri.path in keys:  # one object
                target = dest / Path(uri.path).name
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(uri.authority, uri.path, str(target))
                return target
        prefix = f"{uri.path}/" if uri.path else ""
        keys = [k for k in _s3_keys(client, uri.authority, prefix) if not k.endswith("/")]
        for key in keys:
            target = dest / key[len(prefix) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(uri.authority, key, str(target))
    except Exception as error:  # botocore raises many types; all mean "cannot read"
        raise storage_error(f"cannot read {uri}: {error}") from error
    if not keys:
        raise storage_error(f"{uri} has no objects; check the bucket, the prefix and the credentials' access")
    return dest


# ------------------------------------------------------------------------------------------ inputs


def dataset_files(uri: str, mounts: Mounts, work_dir: Path) -> list[Path]:
    """The local JSON Lines / Parquet files of a dataset URI (a folder means every such file in it)."""
    parsed = parse_uri(uri)
    try:
        if parsed.scheme is Scheme.S3:
            location = download_s3(parsed, work_dir / "dataset", DATASET_CREDENTIALS_PREFIX)
        elif parsed.scheme is Scheme.HF:
            location = _hf_snapshot(parsed, repo_type="dataset", revision=None, allow_patterns=None)
        else:
            location = local_path(parsed, mounts)
    except TrainerError:
        raise
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


def model_dir(uri: str, revision: str | None, mounts: Mounts, work_dir: Path) -> Path:
    """A local directory with the base model's config, weights and tokenizer."""
    parsed = parse_uri(uri)
    try:
        if uri in mounts.local_models:
            location = Path(mounts.local_models[uri])
        elif parsed.scheme is Scheme.S3:
            location = download_s3(parsed, work_dir / "model", MODEL_CREDENTIALS_PREFIX)
        elif parsed.scheme is Scheme.HF:
            location = _hf_snapshot(parsed, repo_type="model", revision=revision, allow_patterns=MODEL_FILE_PATTERNS)
        else:
            location = local_path(parsed, mounts)
    except TrainerError as error:
        raise model_unavailable(f"cannot fetch base model {uri}: {error.message}") from error
    except Exception as error:
        raise model_unavailable(f"cannot fetch base model {uri}: {error}") from error
    if not (location / "config.json").is_file():
        raise model_unavailable(f"base model {uri} has no config.json (looked in {location})")
    return location


def _hf_snapshot(uri: StorageUri, *, repo_type: str, revision: str | None, allow_patterns: list[str] | None) -> Path:
    from huggingface_hub import snapshot_download

    repo_id = f"{uri.authority}/{uri.path}"
    # The token (HF_TOKEN) and the cache (HF_HUB_CACHE / HF_HOME) come from the environment.
    return Path(snapshot_download(repo_id, repo_type=repo_type, revision=revision, allow_patterns=allow_patterns))


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
        download_s3(
            StorageUri(Scheme.S3, self.bucket, self._key(relative_dir)),
            self.local_dir / relative_dir,
            OUTPUT_CREDENTIALS_PREFIX,
        )

    def delete(self, relative_dir: str, marker: str | None = None) -> None:
        super().delete(relative_dir, marker)
        prefix = self._key(relative_dir) + "/"
        keys = _s3_keys(self.client, self.bucket, prefix)
        if marker and prefix + marker in keys:
            keys.remove(prefix + marker)
            keys.insert(0, prefix + marker)
        for key in keys:
            self.client.delete_object(Bucket=self.bucket, Key=key)


def output_location(uri: str, mounts: Mounts, work_dir: Path) -> OutputLocation:
    parsed = parse_uri(uri)
    if parsed.scheme is Scheme.S3:
        return S3Output(uri, parsed, work_dir / "output")
    return OutputLocation(uri, local_path(parsed, mounts))
