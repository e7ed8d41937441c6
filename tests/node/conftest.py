"""Fixtures for the end-to-end tests on a real node (tests/support/real_node.py): one node per session with
the project's images imported, the operator installed from the Helm chart, and a tenant namespace whose
claims are hostPath volumes the test fills and reads."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_REPO_ROOT = str(Path(__file__).resolve().parents[2])
if _REPO_ROOT not in sys.path:  # `tests.*` is not an installed package
    sys.path.insert(0, _REPO_ROOT)

from tests.node.cluster import Tenant, install_operator  # noqa: E402
from tests.support.node_images import project_images  # noqa: E402
from tests.support.real_node import RealNode, missing_tools  # noqa: E402
from tests.support.tiny_model import build_tiny_llama  # noqa: E402


@pytest.fixture(scope="session")
def node() -> Iterator[RealNode]:
    """A fresh node (seconds), with the images of `make images` imported (minutes, once per build)."""
    if os.geteuid() != 0 or missing_tools():
        why = f"the real node needs root and {', '.join(missing_tools()) or 'nothing more'}: make node-tools"
        if os.environ.get("CI"):  # in CI a missing tool is a failure, never a skip
            pytest.fail(why)
        pytest.skip(why)
    real = RealNode(
        Path(os.environ.get("NODE_DIR", Path(_REPO_ROOT) / ".node")),
        Path(os.environ.get("IMAGES_DIR", Path(_REPO_ROOT) / ".images")),
    )
    real.node_dir.mkdir(parents=True, exist_ok=True)
    real.start()
    try:
        for image in project_images():
            real.import_image(image)
        yield real
    finally:
        real.stop()


@pytest.fixture(scope="session")
def operator_release(node: RealNode) -> dict[str, Any]:
    """The chart installed the way `helm install` applies it, with the operator's Deployment rolled out."""
    return install_operator(node)


@pytest.fixture(scope="session")
def tenant(node: RealNode, operator_release: dict[str, Any]) -> Tenant:
    """tenant-a, its claims holding the tiny model (`models/tiny`) and a dataset (`team-data/train.jsonl`)."""
    tenant = Tenant.create(node, "tenant-a")
    build_tiny_llama(tenant.claim_dir("models") / "tiny")
    rows = [{"prompt": f"Say the word number {i}:", "completion": f" word{i % 7} done"} for i in range(64)]
    (tenant.claim_dir("team-data") / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tenant.open_to_pods()
    return tenant
