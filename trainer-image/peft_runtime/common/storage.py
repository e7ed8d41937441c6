"""Storage URIs turned into local paths, and downloads: what `train`, `serve` and `agent` all read.

- `file:///p` is `/p`; `pvc://claim/p` is `<mounts.pvcRoot>/claim/p`; `configmap://name/key` is
  `<mounts.configmapRoot>/name/key` (the pod mounts them there).
- `s3://bucket/key` is any S3-compatible store; boto3 reads credentials, region and the endpoint from the
  standard environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL), or from
  `<prefix>AWS_*` when the operator gave a credentials Secret its own prefix.
- `hf://org/name` is a Hugging Face Hub repository (HF_TOKEN from the environment for private ones).

Failures are `StorageError`; each caller says what it means for it (a training failure, a refused load).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from peft_operator.api.agent import SourceCredentials
from peft_operator.api.plan import MODEL_CREDENTIALS_PREFIX, Mounts
from peft_operator.api.uris import Scheme, StorageUri, parse_uri

# What a model directory needs; weights in other formats (.bin, .pt) are not downloaded.
MODEL_FILE_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


class StorageError(Exception):
    """A location that cannot be read: the message says which and why."""


def local_path(uri: StorageUri, mounts: Mounts) -> Path:
    """The path where a file://, pvc:// or configmap:// URI appears on this machine."""
    if uri.scheme is Scheme.FILE:
        return Path("/" + uri.path)
    if uri.scheme is Scheme.PVC:
        if not mounts.pvc_root:
            raise StorageError(f"{uri} needs a mounted volume (plan.mounts.pvcRoot); in local mode use file://")
        return Path(mounts.pvc_root, uri.authority, uri.path)
    if uri.scheme is Scheme.CONFIGMAP:
        if not mounts.configmap_root:
            raise StorageError(
                f"{uri} needs a mounted ConfigMap (plan.mounts.configmapRoot); in local mode use file://"
            )
        return Path(mounts.configmap_root, uri.authority, uri.path)
    raise ValueError(f"{uri} is not a local or mounted location")


# ---------------------------------------------------------------------------------------------- S3


def s3_client(env_prefix: str = "", credentials: SourceCredentials | None = None) -> Any:
    """A boto3 S3 client configured from the environment; path-style addressing for custom endpoints.

    With `env_prefix` (the operator gives each credentials Secret its own, e.g. DATASET_), the
    `<prefix>AWS_*` variables win; whatever they leave unset comes from the standard AWS chain. With
    `credentials` (handed over for one fetch), their values win the same way."""
    import boto3
    from botocore.config import Config

    given = credentials.model_dump(mode="json", by_alias=True, exclude_none=True) if credentials else {}

    def prefixed(name: str) -> str | None:
        if name in given:
            return str(given[name])
        return os.environ.get(env_prefix + name) if env_prefix else None

    endpoint = (
        prefixed("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    )
    config = Config(
        retries={"max_attempts": 5, "mode": "standard"},
        s3={"addressing_style": "path" if endpoint else "auto"},
    )
    # A session of its own: boto3's default one resolves the ambient credentials once per process and keeps
    # them, so a client made later would not see the environment as it is now.
    return boto3.session.Session().client(
        "s3",
        config=config,
        endpoint_url=prefixed("AWS_ENDPOINT_URL"),
        region_name=prefixed("AWS_REGION"),
        aws_access_key_id=prefixed("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=prefixed("AWS_SECRET_ACCESS_KEY"),
        aws_session_token=prefixed("AWS_SESSION_TOKEN"),
    )


def s3_keys(client: Any, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(item["Key"] for item in page.get("Contents", []))
    return keys


def download_s3(uri: StorageUri, dest: Path, env_prefix: str = "", skip_suffixes: tuple[str, ...] = ()) -> Path:
    """Download an object (returns its local file) or every object under a prefix (returns the folder),
    leaving out keys that end in one of `skip_suffixes`."""
    client = s3_client(env_prefix)
    try:
        if uri.path and not uri.path.endswith("/"):
            keys = s3_keys(client, uri.authority, uri.path)
            if uri.path in keys:  # one object
                target = dest / Path(uri.path).name
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(uri.authority, uri.path, str(target))
                return target
        prefix = f"{uri.path}/" if uri.path else ""
        keys = [k for k in s3_keys(client, uri.authority, prefix) if not k.endswith(("/", *skip_suffixes))]
        for key in keys:
            target = dest / key[len(prefix) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(uri.authority, key, str(target))
    except Exception as error:  # botocore raises many types; all mean "cannot read"
        raise StorageError(f"cannot read {uri}: {error}") from error
    if not keys:
        raise StorageError(f"{uri} has no objects; check the bucket, the prefix and the credentials' access")
    return dest


def fetch_model_dir(uri: str, revision: str | None, mounts: Mounts, work_dir: Path, *, weights: bool = True) -> Path:
    """A local directory with the base model's config, tokenizer and (unless `weights` is False: the
    preflight needs none) weights."""
    parsed = parse_uri(uri)
    skipped = () if weights else WEIGHT_SUFFIXES
    try:
        if uri in mounts.local_models:
            location = Path(mounts.local_models[uri])
        elif parsed.scheme is Scheme.S3:
            location = download_s3(parsed, work_dir / "model", MODEL_CREDENTIALS_PREFIX, skipped)
        elif parsed.scheme is Scheme.HF:
            patterns = [p for p in MODEL_FILE_PATTERNS if not p.endswith(skipped)]
            location = hf_snapshot(parsed, repo_type="model", revision=revision, allow_patterns=patterns)
        else:
            location = local_path(parsed, mounts)
    except Exception as error:  # StorageError, botocore's and huggingface_hub's many types
        raise StorageError(f"cannot fetch base model {uri}: {error}") from error
    if not (location / "config.json").is_file():
        raise StorageError(f"base model {uri} has no config.json (looked in {location})")
    return location


def hf_snapshot(uri: StorageUri, *, repo_type: str, revision: str | None, allow_patterns: list[str] | None) -> Path:
    from huggingface_hub import snapshot_download

    repo_id = f"{uri.authority}/{uri.path}"
    # The token (HF_TOKEN) and the cache (HF_HUB_CACHE / HF_HOME) come from the environment.
    return Path(snapshot_download(repo_id, repo_type=repo_type, revision=revision, allow_patterns=allow_patterns))
