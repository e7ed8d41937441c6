"""The engine's runtime-LoRA API on localhost, as the built-in server and vLLM both speak it:
GET /v1/models (adapters have `parent` = the base model, `root` = the path they were loaded from),
POST /v1/load_lora_adapter {lora_name, lora_path[, load_inplace]}, POST /v1/unload_lora_adapter {lora_name}.

vLLM (0.32, vllm/entrypoints/openai/models/serving.py) answers a load with plain text, refuses a second load
under a held name with a 400 unless `load_inplace` is true, answers an unknown path with a 404, and reports
whatever its worker raised while reading the adapter (over-rank, unreadable weights) as a 500 carrying the
worker's message: those 500s are the adapter's fault, not the engine's, and get the adapter's reason."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from peft_runtime.common.errors import AdapterCorrupt, BadRequest, RankTooLarge, ServingError
from peft_runtime.common.http_edge import TokenSource

from .errors import EngineRejected, EngineUnavailable


@dataclass(frozen=True)
class EngineView:
    base_model: str | None
    adapters: dict[str, str | None]  # name -> root (the path it was loaded from)
    memory: dict[str, tuple[bool, bool]] = field(default_factory=dict)  # name -> (resident, pinned): built-in only


class EngineClient:
    """`kind` is builtin, vllm, or auto: told apart by the base model's `owned_by` in /v1/models."""

    def __init__(self, url: str, *, kind: str = "auto", token: TokenSource | None, timeout_s: float = 300.0) -> None:
        self.url = url.rstrip("/")
        self.kind = kind
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _headers(self) -> dict[str, str]:
        token = self._token.current() if self._token else None
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.request(method, self.url + path, json=body, headers=self._headers()) as response:
                text = await response.text()
                try:
                    payload: Any = await response.json(content_type=None) if text else None
                except ValueError:
                    payload = text  # vLLM answers load/unload with plain text
                return response.status, payload
        except (TimeoutError, aiohttp.ClientError) as error:
            detail = str(error) or type(error).__name__  # a timeout has no message of its own
            raise EngineUnavailable(f"the engine at {self.url} did not answer {method} {path}: {detail}") from error

    async def view(self) -> EngineView:
        status, payload = await self._call("GET", "/v1/models")
        _raise_if_engine_failed(status, payload, "GET /v1/models")
        if status != 200 or not isinstance(payload, dict):
            raise EngineUnavailable(f"the engine's /v1/models answered {status}: {_message(payload)}")
        cards = payload.get("data") or []
        base: dict[str, Any] = next((c for c in cards if not c.get("parent")), {})
        if self.kind == "auto" and base:
            self.kind = "vllm" if base.get("owned_by") == "vllm" else "builtin"
        adapters = {c["id"]: c.get("root") for c in cards if c.get("parent")}
        memory = {
            c["id"]: (bool(c["resident"]), bool(c.get("pinned")))
            for c in cards
            if c.get("parent") and c.get("resident") is not None
        }
        return EngineView(base.get("id"), adapters, memory)

    async def load(self, name: str, path: str, *, replace: bool = False, pinned: bool = False) -> None:
        """`replace`: the engine holds `name` already; vLLM swaps it in place (the old version keeps serving
        until the new one is loaded, and stays if the new one fails). The built-in engine replaces by name.
        `pinned` (built-in engine): never evicted from memory for another adapter."""
        body: dict[str, Any] = {"lora_name": name, "lora_path": path}
        if replace and self.kind == "vllm":
            body["load_inplace"] = True
        if pinned and self.kind == "vllm":
            raise BadRequest(f"adapter '{name}' is pinned, which needs the built-in engine: vLLM cannot pin")
        if pinned:
            body["pinned"] = True
        status, payload = await self._call("POST", "/v1/load_lora_adapter", body)
        if status != 200:
            raise load_failure(name, status, payload)

    async def unload(self, name: str) -> bool:
        """True when the engine held the adapter and let it go; False when it did not have it."""
        status, payload = await self._call("POST", "/v1/unload_lora_adapter", {"lora_name": name})
        if status == 200:
            return True
        if status == 404 or "not found" in _message(payload).lower() or "cannot be found" in _message(payload):
            return False
        _raise_if_engine_failed(status, payload, f"unload '{name}'")
        raise EngineRejected(f"the engine refused to unload '{name}' ({status}): {_message(payload)}")


def _message(payload: Any) -> str:
    """The human part of an engine's answer: OpenAI/vLLM error shapes, or plain text."""
    if isinstance(payload, dict):
        error = payload.get("error", payload)
        if isinstance(error, dict):
            return str(error.get("message", error))
        return str(error)
    return str(payload or "")


# vLLM's worker: "LoRA rank 64 is greater than max_lora_rank 16." (vllm/lora/models.py)
_VLLM_RANK = re.compile(r"LoRA rank (\d+) is greater than max_lora_rank (\d+)")
# A vLLM 500 naming the engine itself (not the adapter): the engine is gone or broken, try again later.
_ENGINE_DOWN = ("EngineDeadError", "EngineCore", "engine core")


def load_failure(name: str, status: int, payload: Any) -> ServingError:
    """The per-adapter error for a refused load: the built-in engine's own reason, vLLM's rank and
    unreadable-adapter 500s mapped to RankTooLarge and AdapterCorrupt, a dead engine EngineUnavailable,
    anything else EngineRejected, always with the engine's own words."""
    message = _message(payload)
    reason = payload.get("error", {}).get("reason") if isinstance(payload, dict) else None
    rank = _VLLM_RANK.search(message)
    if rank:
        # The engine's own limit, which is limits.maxRank only where the operator started the engine: a
        # targetRef Deployment keeps its own --max-lora-rank.
        return RankTooLarge(
            f"the engine refused '{name}': the adapter has rank {rank[1]}, above the engine's max_lora_rank "
            f"{rank[2]}: retrain with a smaller r, or raise the engine's --max-lora-rank (limits.maxRank for "
            f"runtime.engine: vllm; the Deployment's own flag with targetRef) ({message})"
        )
    if status >= 500 and any(marker in message for marker in _ENGINE_DOWN):
        return EngineUnavailable(f"the engine failed while loading '{name}' ({status}): {message}")
    if status >= 500 and reason is None:
        # vLLM's worker raised while reading the adapter's files: they are not a loadable LoRA adapter.
        return AdapterCorrupt(f"the engine could not read adapter '{name}' ({status}): {message}")
    return EngineRejected(f"the engine refused to load '{name}' ({status}): {message}", reason)


def _raise_if_engine_failed(status: int, payload: Any, what: str) -> None:
    if status >= 500:
        raise EngineUnavailable(f"the engine failed {what} ({status}): {_message(payload)}")
