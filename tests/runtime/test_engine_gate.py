"""The engine gate in front of the REAL built-in engine (tiny Llama, real adapters), over real HTTP: client
routes pass through unchanged (status, body, streamed chunks), admin routes never reach the engine whatever
token or spelling a client tries, and an engine that is down is a 502 in OpenAI's error shape."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.adapters import make_lora_adapter
from tests.support.http import call_json

TOKEN = "gate-test-admin-token"
BASE = "tiny-base"
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from peft_runtime.common.http_edge import BackgroundServer, TokenSource
    from peft_runtime.serving.app import create_app
    from peft_runtime.serving.engine import Engine, EngineConfig

    token_file = tmp_path_factory.mktemp("secrets") / "token"
    token_file.write_text(TOKEN)
    config = EngineConfig(model_dir=tiny_model_dir, served_name=BASE, max_adapters=4, max_rank=8, threads=1)
    core = Engine(config).start()
    http = BackgroundServer(lambda: create_app(core, TokenSource(token_file))).start()
    yield http
    http.stop()
    core.stop()


@pytest.fixture(scope="module")
def gate(engine: Any) -> Iterator[Any]:
    from peft_runtime.common.http_edge import BackgroundServer
    from peft_runtime.gate.app import create_app

    with BackgroundServer(lambda: create_app(engine.url)) as server:
        yield server


@pytest.fixture(scope="module")
def adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lora_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter") / "a", seed=1).path


def served_adapters(server: Any) -> set[str]:
    status, body = call_json(server.url + "/v1/models", "GET")
    assert status == 200, body
    return {card["id"] for card in body["data"] if card.get("parent")}


def test_completions_pass_through_with_the_engines_status_and_body(gate: Any, engine: Any) -> None:
    request = {"model": BASE, "prompt": "The capital of france is", "max_tokens": 6, "temperature": 0}
    direct = call_json(engine.url + "/v1/completions", "POST", request)
    through = call_json(gate.url + "/v1/completions", "POST", request)

    assert through[0] == direct[0] == 200
    assert through[1]["choices"] == direct[1]["choices"]
    unknown = {**request, "model": "no-such-adapter"}
    assert call_json(gate.url + "/v1/completions", "POST", unknown) == call_json(
        engine.url + "/v1/completions", "POST", unknown
    )
    assert call_json(gate.url + "/v1/models", "GET") == call_json(engine.url + "/v1/models", "GET")
    card = call_json(gate.url + f"/v1/models/{BASE}", "GET")
    assert card[0] == 200 and card == call_json(engine.url + f"/v1/models/{BASE}", "GET")


async def _stream(url: str, body: dict[str, Any]) -> tuple[str, list[bytes]]:
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as response:
        assert response.status == 200
        return response.headers["Content-Type"], [chunk async for chunk in response.content.iter_any()]


def test_a_streamed_completion_arrives_as_the_engines_server_sent_events(gate: Any, engine: Any) -> None:
    request = {"model": BASE, "prompt": "Hello", "max_tokens": 8, "temperature": 0, "stream": True}
    direct_type, direct = asyncio.run(_stream(engine.url + "/v1/completions", request))
    gate_type, through = asyncio.run(_stream(gate.url + "/v1/completions", request))

    assert gate_type == direct_type and gate_type.startswith("text/event-stream")
    events = sse_data(through)
    assert events[-1] == "[DONE]" and len(events) >= 3
    assert [json.loads(e)["choices"] for e in events[:-1]] == [json.loads(e)["choices"] for e in sse_data(direct)[:-1]]


def sse_data(chunks: list[bytes]) -> list[str]:
    return [line.removeprefix("data: ") for line in b"".join(chunks).decode().splitlines() if line.startswith("data: ")]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/load_lora_adapter"),
        ("POST", "/v1/unload_lora_adapter"),
        ("POST", "/adapters"),  # vLLM's SageMaker alias for a load
        ("DELETE", "/adapters/victim"),
        ("POST", "/reset_prefix_cache"),
        ("POST", "/sleep"),
        ("POST", "/collective_rpc"),
    ],
)
def test_admin_routes_are_refused_even_with_the_engines_admin_token(
    gate: Any, engine: Any, adapter: Path, method: str, path: str
) -> None:
    body = {"lora_name": "intruder", "lora_path": str(adapter), "name": "intruder", "src": str(adapter)}
    status, answer = call_json(gate.url + path, method, body, TOKEN)

    assert status == 403, answer
    assert answer["error"]["type"] == "PermissionDeniedError" and answer["error"]["code"] == 403
    assert answer["error"]["reason"] == "AdminRoute" and "spec.adapters" in answer["error"]["message"]
    assert "intruder" not in served_adapters(engine)


@pytest.mark.parametrize(
    "spelling",
    [
        "/v1/models/../load_lora_adapter",
        "/v1/models/%2E%2E/load_lora_adapter",
        "/v1/completions/../load_lora_adapter",
        "//v1/load_lora_adapter",
        "/v1/load_lora_adapter/",
        "/v1/%6Coad_lora_adapter",
    ],
)
def test_no_spelling_of_the_load_route_reaches_the_engine(gate: Any, engine: Any, adapter: Path, spelling: str) -> None:
    status, answer = call_json(gate.url + spelling, "POST", {"lora_name": "sneaky", "lora_path": str(adapter)}, TOKEN)

    assert status in (403, 404), answer
    assert "sneaky" not in served_adapters(engine)


def test_the_engine_itself_still_loads_for_the_agent_on_loopback(engine: Any, adapter: Path) -> None:
    status, answer = call_json(
        engine.url + "/v1/load_lora_adapter", "POST", {"lora_name": "agent-made", "lora_path": str(adapter)}, TOKEN
    )

    assert status == 200, answer
    assert "agent-made" in served_adapters(engine)
    assert call_json(engine.url + "/v1/unload_lora_adapter", "POST", {"lora_name": "agent-made"}, TOKEN)[0] == 200


def test_unknown_routes_are_404_and_wrong_methods_405_naming_what_is_served(gate: Any) -> None:
    status, answer = call_json(gate.url + "/v2/anything", "GET")
    assert (status, answer["error"]["reason"]) == (404, "RouteNotServed")
    assert "POST /v1/chat/completions" in answer["error"]["message"]

    status, answer = call_json(gate.url + "/v1/completions", "GET")
    assert (status, answer["error"]["reason"]) == (405, "MethodNotAllowed")
    assert "accepts POST" in answer["error"]["message"]


def test_an_engine_that_is_down_is_a_502_so_the_pod_is_not_ready() -> None:
    from peft_runtime.common.http_edge import BackgroundServer
    from peft_runtime.gate.app import create_app
    from tests.support.vllm_server import free_port

    closed = f"http://127.0.0.1:{free_port()}"
    with BackgroundServer(lambda: create_app(closed)) as gate:
        status, answer = call_json(gate.url + "/health", "GET")

    assert (status, answer["error"]["reason"]) == (502, "EngineUnavailable")
    assert closed in answer["error"]["message"]
