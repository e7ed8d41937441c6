"""The adapter agent reads adapters only from its configured roots, whatever it is asked to load: file://
is refused inside a cluster, pvc:// and file:// paths (symlinks resolved) may not leave their roots.

The agent runs as configured by its real command line and is called over HTTP; its engine is absent (a
closed port), so a request the roots allow gets as far as the engine (502) and one they refuse stops at 403."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import start_agent
from tests.support.http import call_json

TOKEN = "roots-test-token"
SHA = "a" * 64


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN)
    return path


def _put(agent: Any, uri: str) -> tuple[int, str]:
    status, body = call_json(f"{agent.url}/v1/adapters/tenant-a", "PUT", {"uri": uri, "sha256": SHA}, TOKEN, 30)
    return status, body["error"]["reason"]


@pytest.fixture
def agent_in_cluster(token_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Path]]:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")  # what every pod's environment has
    pvc = tmp_path / "pvc"
    (pvc / "team-adapters" / "a").mkdir(parents=True)
    (pvc / "team-adapters" / "escape").symlink_to("/etc")
    agent = start_agent(
        token_file, "--engine-url=http://127.0.0.1:9", f"--adapter-root={tmp_path / 'volume'}", f"--pvc-root={pvc}"
    )
    yield agent, pvc
    agent.stop()


def test_in_a_cluster_file_uris_are_refused_and_pvc_paths_stay_on_their_volume(
    agent_in_cluster: tuple[Any, Path],
) -> None:
    agent, _ = agent_in_cluster
    for uri in ("file:///etc", "file:///etc/shadow", "file:///adapters/other-tenant/" + SHA):
        assert _put(agent, uri) == (403, "SourceNotAllowed"), uri
    assert _put(agent, "pvc://team-adapters/escape") == (403, "SourceNotAllowed")
    assert _put(agent, "pvc://team-adapters/a") == (502, "EngineUnavailable")  # allowed: on to the engine


def test_file_roots_confine_file_uris(token_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    allowed = tmp_path / "local-adapters"
    (allowed / "a").mkdir(parents=True)
    (allowed / "link").symlink_to(tmp_path)
    agent = start_agent(
        token_file,
        "--engine-url=http://127.0.0.1:9",
        f"--adapter-root={tmp_path / 'volume'}",
        f"--pvc-root={tmp_path / 'pvc'}",
        f"--file-root={allowed}",
    )
    try:
        assert _put(agent, (allowed / "a").as_uri()) == (502, "EngineUnavailable")
        assert _put(agent, (allowed / "link").as_uri()) == (403, "SourceNotAllowed")
        assert _put(agent, (tmp_path / "volume").as_uri()) == (403, "SourceNotAllowed")
    finally:
        agent.stop()


def test_local_mode_without_roots_reads_any_directory(token_file: Path, tmp_path: Path) -> None:
    agent = start_agent(
        token_file, "--engine-url=http://127.0.0.1:9", f"--adapter-root={tmp_path / 'v'}", f"--pvc-root={tmp_path}"
    )
    try:
        assert _put(agent, tmp_path.as_uri()) == (502, "EngineUnavailable")
    finally:
        agent.stop()
