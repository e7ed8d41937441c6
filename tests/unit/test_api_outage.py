"""Unit: an API server that is away (connection refused on loopback, a real socket) is an expected outage:
the reconcilers say RetryLater and the handlers log one line, never a traceback."""

from __future__ import annotations

import logging
import socket
from types import SimpleNamespace

import kubernetes
import pytest

from peft_operator import handlers, reconcilers
from peft_operator.settings import OperatorSettings


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def unreachable() -> kubernetes.client.ApiClient:
    configuration = kubernetes.client.Configuration()
    configuration.host = f"http://127.0.0.1:{_closed_port()}"
    configuration.retries = 0
    return kubernetes.client.ApiClient(configuration)


@pytest.mark.parametrize("reconcile", [reconcilers.finetunejob, reconcilers.adapterdeployment])
def test_connection_refused_is_retry_later(unreachable: kubernetes.client.ApiClient, reconcile: object) -> None:
    with pytest.raises(reconcilers.RetryLater, match="API server unreachable"):
        reconcile(unreachable, OperatorSettings(), "team", "demo")  # type: ignore[operator]


def test_an_event_handler_logs_one_line_without_a_traceback(
    unreachable: kubernetes.client.ApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    memo = SimpleNamespace(api_client=unreachable, settings=OperatorSettings())
    with caplog.at_level(logging.INFO, logger="peft_operator"):
        handlers._run_for_event(reconcilers.finetunejob, memo, "team", "demo")
    lines = [r for r in caplog.records if r.name.startswith("peft_operator")]
    assert len(lines) == 1 and lines[0].exc_info is None
    assert "API server unreachable" in lines[0].getMessage() and "\n" not in lines[0].getMessage()
