"""The operator's client for the adapter agent in every engine pod (token-protected HTTP on the pod IP)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from ..api.agent import (
    ADAPTERS_PATH,
    KEYRING_PATH,
    AdapterList,
    AdapterReport,
    ErrorBody,
    Keyring,
    KeyringReport,
    LoadAdapterRequest,
    SourceCredentials,
    adapter_path,
)
from ..naming import AGENT_PORT


class AgentUnreachableError(RuntimeError):
    """The agent did not answer (pod starting, network, crash)."""


class AgentRefusal(Exception):
    """The agent answered with an error: `reason` is CamelCase and goes into the adapter's status."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class AgentClient:
    """PUT is synchronous (fetch, verify, load): the timeout covers a large adapter on slow storage."""

    def __init__(self, pod_ip: str, token: str, port: int = AGENT_PORT, timeout: float = 600.0):
        self.base = f"http://{pod_ip}:{port}"
        self.token = token
        self.timeout = timeout

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        request = urllib.request.Request(
            self.base + path,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
            method=method,
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"{}")  # type: ignore[no-any-return]
        except urllib.error.HTTPError as error:
            raw = error.read()
            try:
                detail = ErrorBody.model_validate_json(raw).error
                raise AgentRefusal(error.code, detail.reason, detail.message) from None
            except ValueError:
                raise AgentRefusal(error.code, "AgentError", raw.decode(errors="replace")[:500]) from None
        except (urllib.error.URLError, OSError) as error:
            raise AgentUnreachableError(f"agent at {self.base} did not answer: {error}") from error

    def loaded(self) -> AdapterList:
        return AdapterList.model_validate(self._call("GET", ADAPTERS_PATH))

    def load(
        self,
        name: str,
        uri: str,
        sha256: str,
        credentials_env_prefix: str | None = None,
        credentials: SourceCredentials | None = None,
        *,
        pinned: bool = False,
    ) -> AdapterReport:
        body = LoadAdapterRequest(
            uri=uri,
            sha256=sha256,
            pinned=pinned,
            credentials_env_prefix=credentials_env_prefix,
            credentials=credentials,
        ).to_wire()
        return AdapterReport.model_validate(self._call("PUT", adapter_path(name), body))

    def unload(self, name: str) -> None:
        self._call("DELETE", adapter_path(name))

    def put_keyring(self, keyring: Keyring) -> KeyringReport:
        """Hand the engine gate every valid API key (by digest); a key left out is revoked."""
        return KeyringReport.model_validate(self._call("PUT", KEYRING_PATH, keyring.to_wire()))
