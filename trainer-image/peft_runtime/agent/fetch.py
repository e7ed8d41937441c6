"""Copy an adapter from its storage URI into a local (staging) directory. Blocking: run in a thread.

The adapter is exactly manifest.json and the files it lists: checkpoints or anything else beside them
in the same folder are never copied (a training output keeps its checkpoints next to the adapter).

- `s3://bucket/prefix`: objects under `prefix/`, from any S3-compatible store; credentials, region and
  endpoint come from the agent's environment (AWS_*, or <prefix>AWS_* for the adapter's own Secret).
- `pvc://claim/path`: `<pvc-root>/<claim>/<path>`, a volume mounted into the agent's container.
- `file:///path`: a local directory (local mode, or below a `--file-root`; see roots.py).
- `hf://org/name[/subfolder]`: a Hugging Face Hub repository (HF_TOKEN from the environment), where reachable.

Names from the manifest become paths only after a check that they stay inside the destination.
"""

from __future__ import annotations

import errno
import json
import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from peft_operator.api.agent import SourceCredentials
from peft_operator.api.manifest import MANIFEST_FILE_NAME
from peft_operator.api.uris import Scheme, StorageUri
from peft_runtime.common.errors import AdapterCorrupt

from .errors import InsufficientStorage, SourceNotFound, SourceUnavailable
from .roots import SourceRoots


def fetch(
    uri: StorageUri,
    dest: Path,
    *,
    roots: SourceRoots,
    credentials_env_prefix: str = "",
    credentials: SourceCredentials | None = None,
) -> None:
    """`credentials`: handed over for this fetch only (an adapter attached from another namespace)."""
    try:
        local = roots.local_dir(uri)  # pvc:// and file://, refused outside the agent's roots
        if local is not None:
            get = _local_getter(local, uri)
        elif uri.scheme is Scheme.S3:
            get = _s3_getter(uri, credentials_env_prefix, credentials)
        elif uri.scheme is Scheme.HF:
            get = _hub_getter(
                uri, credentials.hf_token.get_secret_value() if credentials and credentials.hf_token else None
            )
        else:
            raise SourceNotFound(f"{uri}: adapters cannot come from {uri.scheme.value}:// URIs")
        dest.mkdir(parents=True, exist_ok=True)
        get(MANIFEST_FILE_NAME, dest / MANIFEST_FILE_NAME)
        for name in _listed_files(dest / MANIFEST_FILE_NAME, uri):
            target = dest.joinpath(safe_relative(name, uri))
            target.parent.mkdir(parents=True, exist_ok=True)
            get(name, target)
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise InsufficientStorage(f"the adapter volume is full while copying {uri}: {error}") from error
        raise SourceUnavailable(f"cannot copy {uri}: {error}") from error


def _listed_files(manifest: Path, uri: StorageUri) -> list[str]:
    try:
        files = json.loads(manifest.read_text())["files"]
        if not isinstance(files, dict):
            raise TypeError("files is not a mapping")
    except (ValueError, KeyError, TypeError) as error:
        raise AdapterCorrupt(f"{uri}: manifest.json does not list the adapter's files: {error}") from error
    return sorted(files)


def safe_relative(name: str, uri: StorageUri) -> PurePosixPath:
    """A relative path that cannot leave its directory, or AdapterCorrupt."""
    path = PurePosixPath(name)
    if not name or "\\" in name or path.is_absolute() or any(part in ("", ".", "..") for part in name.split("/")):
        raise AdapterCorrupt(f"{uri} contains the entry '{name}', whose path would leave the adapter directory")
    return path


def _local_getter(source: Path, uri: StorageUri) -> Callable[[str, Path], None]:
    if not source.is_dir():
        raise SourceNotFound(f"{uri} is not a directory (looked at {source}); check the URI and the volume mount")

    def get(name: str, target: Path) -> None:
        path = source.joinpath(name)
        if path.is_symlink() or not path.is_file():  # links could point anywhere: only regular files count
            raise SourceNotFound(f"{uri} has no regular file {name}")
        shutil.copyfile(path, target)

    return get


def _s3_getter(
    uri: StorageUri, credentials_env_prefix: str, credentials: SourceCredentials | None
) -> Callable[[str, Path], None]:
    from botocore.exceptions import BotoCoreError, ClientError

    from peft_runtime.common.storage import s3_client

    prefix = f"{uri.path}/" if uri.path else ""
    client = s3_client(credentials_env_prefix, credentials)

    def get(name: str, target: Path) -> None:
        try:
            client.download_file(uri.authority, prefix + name, str(target))
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchBucket", "404", "NoSuchKey"):
                raise SourceNotFound(f"{uri}/{name}: {code}; check the bucket and the prefix") from error
            raise SourceUnavailable(
                f"cannot read {uri}: {error}; check the credentials and AWS_ENDPOINT_URL"
            ) from error
        except BotoCoreError as error:
            raise SourceUnavailable(f"cannot reach the object store for {uri}: {error}") from error

    return get


def _hub_getter(uri: StorageUri, token: str | None) -> Callable[[str, Path], None]:
    """`token` None: HF_TOKEN from the environment, if any."""
    from huggingface_hub import hf_hub_download

    parts = uri.path.split("/", 1)
    repo_id = f"{uri.authority}/{parts[0]}"
    subfolder = parts[1] if len(parts) > 1 else None

    def get(name: str, target: Path) -> None:
        try:
            downloaded = hf_hub_download(repo_id, name, subfolder=subfolder, token=token)
        except Exception as error:  # the Hub client raises many types; all mean "cannot read"
            raise SourceUnavailable(f"cannot download {name} of {uri} from the Hugging Face Hub: {error}") from error
        shutil.copyfile(downloaded, target)

    return get
