"""Fixtures for the image tests (marker `images`, `make test-images`): both images built by `make images`
with buildah into .images/, then started under podman.

- ``built_images`` (session): runs `make images IMAGE_TOOL=buildah` and returns the operator and runtime
  images. Cold on 2 cores: ~2 min for a locally made base, ~1 min operator, ~3 min runtime; warm: seconds.
- The control-plane fixtures of tests/integration (``controlplane``, ``crds_installed``, ``admin``,
  ``namespace``) for the operator image's run against the real kube-apiserver.

These tests build ~6 GB of images, so they run only when selected (`-m images`); elsewhere they skip. They
need root, buildah, podman and runc (and debootstrap when Docker Hub is unreachable); without them they skip,
and with $CI set they fail instead.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.images.containers import IMAGES_DIR, OFFICIAL_PYTHON, Image, image_names, missing_tools
from tests.integration.conftest import _in_ci, admin, controlplane, crds_installed, namespace
from tests.support.controlplane import REPO_ROOT

__all__ = ["admin", "controlplane", "crds_installed", "namespace"]


_REPORT: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in _REPORT:
        terminalreporter.write_line(line)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "images" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="builds ~6 GB of images: run `make test-images` (pytest -m images)")
    for item in items:
        if item.get_closest_marker("images") is not None:
            item.add_marker(skip)


def _unavailable(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"CI is set and the images cannot be built: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def built_images() -> Iterator[tuple[Image, Image]]:
    missing = missing_tools()
    if missing:
        _unavailable(f"missing {', '.join(missing)} (apt-get install buildah podman runc debootstrap)")
    if os.geteuid() != 0:
        _unavailable("the image tests run buildah and podman as root")
    (IMAGES_DIR / "tmp").mkdir(parents=True, exist_ok=True)
    log = IMAGES_DIR / "make-images.log"
    # Pinned here: others may commit while the images build.
    revision = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
    ).stdout.strip()
    started = time.monotonic()
    with log.open("w") as out:
        done = subprocess.run(
            ["make", "images", "IMAGE_TOOL=buildah", f"IMAGES_DIR={IMAGES_DIR}", f"IMAGE_REVISION={revision}"],
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=3600,
            check=False,
        )
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
    assert done.returncode == 0, f"`make images` failed (full log: {log}):\n{tail}"
    operator, runtime = (Image(name, revision) for name in image_names())
    base = operator.local_base
    _REPORT.append(
        f"make images: {time.monotonic() - started:.0f} s (log: {log}); base: "
        + (f"MADE LOCALLY ({base}), not the official Python {OFFICIAL_PYTHON}" if base else "the official image")
    )
    yield operator, runtime
