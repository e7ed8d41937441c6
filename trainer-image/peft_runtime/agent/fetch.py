"""Copy an adapter directory from its storage URI into a local (staging) directory. Blocking: run in a thread.

- `s3://bucket/prefix`: every object under `prefix/`, from any S3-compatible store; credentials, region and
  endpoint come from the agent's environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL).
- `pvc://claim/path`: `<pvc-root>/<claim>/<path>`, a volume mounted into the agent's container.
- `file:///path`: a local directory (local mode).
- `hf://org/name`: a Hugging Face Hub repository (HF_TOKEN from the environment), where the Hub is reachable.

Object keys and file names become paths only after a check that they stay inside the destination.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path, PurePosixPath

from peft_operator.api.uris import Scheme, StorageUri
from peft_runtime.serving.errors import AdapterCorrupt

from .errors import InsufficientStorage, SourceNotFound, SourceUnavailable


def fetch(uri: StorageUri, dest: Path, *, pvc_root: Path, credentials_env_prefix: str = "") -> None:
    try:
        if uri.scheme is Scheme.S3:
            _fetch_s3(uri, dest, credentials_env_prefix)
        elif uri.scheme is Scheme.PVC:
            _copy_tree(pvc_root / uri.authority / uri.path, dest, uri)
        elif uri.scheme is Scheme.FILE:
            _copy_tree(Path("/" + uri.path), dest, uri)
        elif uri.scheme is Scheme.HF:
            _fetch_hf(uri, dest)
        else:
            raise SourceNotFound(f"{uri}: adapters cannot come from {uri.scheme.value}:// URIs")
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise InsufficientStorage(f"the adapter volume is full while copying {uri}: {error}") from error
        raise SourceUnavailable(f"cannot copy {uri}: {error}") from error


def safe_relative(name: str, uri: StorageUri) -> PurePosixPath:
    """A relative path that cannot leave its directory, or AdapterCorrupt."""
    path = PurePosixPath(name)
    if not name or "\\" in name or path.is_absolute() or any(part in ("", ".", "..") for part in name.split("/")):
        raise AdapterCorrupt(f"{uri} contains the entry '{name}', whose path would leave the adapter directory")
    return path


def _copy_tree(source: Path, dest: Path, uri: StorageUri) -> None:
    if not source.is_dir():
        raise SourceNotFound(f"{uri} is not a directory (looked at {source}); check the URI and the volume mount")
    copied = 0
    for path in sorted(source.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue  # links could point anywhere: only regular files are part of an adapter
        relative = safe_relative(path.relative_to(source).as_posix(), uri)
        target = dest.joinpath(relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        copied += 1
    if not copied:
        raise SourceNotFound(f"{uri} is an empty directory")


def _fetch_s3(uri: StorageUri, dest: Path, credentials_env_prefix: str) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    from peft_runtime.train.storage import s3_client

    prefix = f"{uri.path}/" if uri.path else ""
    client = s3_client(credentials_env_prefix)
    try:
        keys: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=uri.authority, Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents", []) if not item["Key"].endswith("/"))
        if not keys:
            raise SourceNotFound(f"{uri} holds no objects; check the bucket, the prefix and the credentials' access")
        for key in keys:
            target = dest.joinpath(safe_relative(key[len(prefix) :], uri))
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(uri.authority, key, str(target))
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchBucket", "404", "NoSuchKey"):
            raise SourceNotFound(f"{uri}: {code}; check the bucket and the prefix") from error
        raise SourceUnavailable(f"cannot read {uri}: {error}; check the credentials and AWS_ENDPOINT_URL") from error
    except BotoCoreError as error:
        raise SourceUnavailable(f"cannot reach the object store for {uri}: {error}") from error


def _fetch_hf(uri: StorageUri, dest: Path) -> None:
    from huggingface_hub import snapshot_download

    parts = uri.path.split("/", 1)
    repo_id = f"{uri.authority}/{parts[0]}"
    try:
        snapshot_download(repo_id, local_dir=dest, allow_patterns=[f"{parts[1]}/*"] if len(parts) > 1 else None)
    except Exception as error:  # the Hub client raises many types; all mean "cannot read"
        raise SourceUnavailable(f"cannot download {uri} from the Hugging Face Hub: {error}") from error
    if len(parts) > 1:  # a subfolder of the repository is the adapter
        sub = dest / parts[1]
        for item in sub.iterdir():
            item.rename(dest / item.name)
        shutil.rmtree(dest / parts[1].split("/")[0], ignore_errors=True)
    shutil.rmtree(dest / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping, not adapter files
