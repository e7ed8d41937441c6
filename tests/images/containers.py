"""buildah and podman, always on the repository's own storage ($IMAGES_DIR, default .images/): never the
system's. The flags are the ones measured to work on this kind of host (root, hybrid cgroups): builds with
chroot isolation, runs with runc and explicit ulimits."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support.controlplane import REPO_ROOT

IMAGES_DIR = Path(os.environ.get("IMAGES_DIR", REPO_ROOT / ".images"))
BASE_IMAGE = "python:3.11.14-slim-bookworm"  # both Dockerfiles' FROM
OFFICIAL_PYTHON = "3.11.14"  # python.org's build in the official image
LOCAL_BASE_LABEL = "dev.peft-operator.local-base"  # set by tests/images/local_base.sh on a base it made


def app_version() -> str:
    return str(yaml.safe_load((REPO_ROOT / "charts/peft-operator/Chart.yaml").read_text())["appVersion"])


def image_names(registry: str = "ghcr.io/peft-operator") -> tuple[str, str]:
    """What `make images` tags: the chart's default repositories at the chart's appVersion."""
    return f"{registry}/operator:{app_version()}", f"{registry}/runtime:{app_version()}"


def missing_tools() -> list[str]:
    return [tool for tool in ("buildah", "podman", "runc") if shutil.which(tool) is None]


def _storage() -> list[str]:
    return ["--root", str(IMAGES_DIR / "storage"), "--runroot", str(IMAGES_DIR / "run"), "--storage-driver", "overlay"]


def buildah(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("check", True)
    env = {**os.environ, "TMPDIR": str(IMAGES_DIR / "tmp")}
    return subprocess.run(["buildah", *_storage(), *args], capture_output=True, text=True, env=env, **kwargs)


def podman_command(*args: str) -> list[str]:
    return ["podman", *_storage(), "--tmpdir", str(IMAGES_DIR / "tmp"), "--runtime", "runc", *args]


def podman(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("check", True)
    return subprocess.run(podman_command(*args), capture_output=True, text=True, **kwargs)


# Every container: no pulls, the ulimits runc needs here, read-only root as in the chart's pods.
RUN = ["run", "--rm", "--pull=never", "--ulimit=nofile=1024:1024", "--ulimit=nproc=1024:1024", "--read-only"]


@dataclass(frozen=True)
class Image:
    name: str
    revision: str = ""  # the git commit `make images` was given (IMAGE_REVISION)

    def config(self) -> dict[str, Any]:
        inspected = json.loads(buildah("inspect", "--type", "image", self.name).stdout)
        return inspected["OCIv1"]["config"]  # type: ignore[no-any-return]

    @property
    def labels(self) -> dict[str, str]:
        return self.config().get("Labels") or {}

    @property
    def local_base(self) -> str | None:
        """What the locally made base says it is, or None on the official base."""
        return self.labels.get(LOCAL_BASE_LABEL)

    def run(self, *args: str, entrypoint: str | None = None, options: tuple[str, ...] = (), timeout: float = 300):
        """`podman run` to completion; returns the CompletedProcess (check it yourself)."""
        override = [f"--entrypoint={entrypoint}"] if entrypoint else []
        return podman(*RUN, *options, *override, self.name, *args, check=False, timeout=timeout)
