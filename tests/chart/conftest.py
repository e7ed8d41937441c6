"""Fixtures for the chart tests: the chart loaded once, and (for the install tests) the real control plane
of tests/integration, re-exported so that both folders share one definition of it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_REPO_ROOT = str(Path(__file__).resolve().parents[2])
if _REPO_ROOT not in sys.path:  # `tests.*` is not an installed package
    sys.path.insert(0, _REPO_ROOT)

from tests.chart.rendering import CHART_DIR  # noqa: E402
from tests.integration.conftest import (  # noqa: E402, F401  (re-exported fixtures and hook)
    controller_manager,
    controlplane,
    crds_installed,
    pytest_runtest_makereport,
)


@pytest.fixture(scope="session")
def chart() -> Iterator[object]:
    """The chart, loaded with the Helm SDK (the same loader `helm install` uses)."""
    import helm_python

    loaded = helm_python.Chart.load(CHART_DIR)
    try:
        yield loaded
    finally:
        loaded.close()
