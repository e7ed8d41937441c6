"""Content digests of adapter directories: writing manifest.json and verifying a copy against it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from peft_operator.api.manifest import MANIFEST_FILE_NAME, AdapterManifest

_CHUNK = 1 << 20


class DigestMismatchError(ValueError):
    """A file, or the manifest itself, does not have the sha256 it should."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_digests(directory: Path) -> dict[str, str]:
    """sha256 of every regular file under `directory` except manifest.json, keyed by relative path."""
    return {
        path.relative_to(directory).as_posix(): sha256_file(path)
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != MANIFEST_FILE_NAME
    }


def write_manifest(directory: Path, manifest: AdapterManifest) -> str:
    """Write manifest.json (stable formatting, so equal content gives an equal digest); return its sha256."""
    text = json.dumps(manifest.to_wire(), indent=2, sort_keys=True) + "\n"
    path = directory / MANIFEST_FILE_NAME
    path.write_text(text)
    return sha256_file(path)


def verify_adapter_dir(
    directory: Path, expected_sha256: str | None = None, *, allow_unlisted: bool = False
) -> AdapterManifest:
    """Check manifest.json against `expected_sha256` and every listed file against the manifest.

    A copy (the agent's) must hold nothing else. `allow_unlisted` is for a folder used where it is, such as a
    training output with checkpoints/ beside the adapter: other files are neither read nor hashed."""
    manifest_path = directory / MANIFEST_FILE_NAME
    if not manifest_path.is_file():
        raise DigestMismatchError(f"{directory} has no {MANIFEST_FILE_NAME}; it is not a peft-operator adapter")
    if expected_sha256 is not None:
        actual = sha256_file(manifest_path)
        if actual != expected_sha256:
            raise DigestMismatchError(
                f"{MANIFEST_FILE_NAME} has sha256 {actual}, expected {expected_sha256}: "
                "the adapter changed or the digest in the spec is wrong"
            )
    manifest = AdapterManifest.model_validate_json(manifest_path.read_text())
    if allow_unlisted:  # listed files only; a name that leads outside the directory counts as missing
        inside = directory.resolve()
        actual_files = {
            name: sha256_file(directory / name)
            for name in manifest.files
            if (directory / name).resolve().is_relative_to(inside) and (directory / name).is_file()
        }
    else:
        actual_files = file_digests(directory)
    for name, expected in manifest.files.items():
        if name not in actual_files:
            raise DigestMismatchError(f"{name} is listed in {MANIFEST_FILE_NAME} but missing")
        if actual_files[name] != expected:
            raise DigestMismatchError(f"{name} has sha256 {actual_files[name]}, the manifest says {expected}")
    unlisted = sorted(set(actual_files) - set(manifest.files))
    if unlisted:
        raise DigestMismatchError(f"files not in {MANIFEST_FILE_NAME}: {', '.join(unlisted)}; refusing to load them")
    return manifest
