"""The agent's mapping of vLLM's answers, against a STAND-IN for vLLM (unit-level: no vLLM process). The
stand-in answers the three routes as vLLM 0.32's OpenAIServingModels does (vllm/entrypoints/openai/models/
serving.py): model cards owned by "vllm" with `root` = the LoRA path and `parent` = the base; a second load
under a held name is a 400 unless `load_inplace`; a worker failure (over-rank, unreadable weights) is a 500
with the worker's message; unloading an unknown name is a 404; success is plain text. The same behaviour
against real vLLM is tested in tests/vllm/ (`make test-vllm`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.support.adapters import (
    TestAdapter,
    base_uri,
    make_bottleneck_adapter,
    make_ia3_adapter,
    make_lora_adapter,
    make_prefix_tuning_adapter,
    make_prompt_tuning_adapter,
)
from tests.support.agent import start_agent
from tests.support.http import call_json

TOKEN = "vllm-agent-token"
BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
pytestmark = pytest.mark.timeout(60)


class VllmStandIn:
    def __init__(self) -> None:
        self.loras: dict[str, str] = {}
        self.calls: list[tuple[str, str]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/load_lora_adapter", self.load)
        app.router.add_post("/v1/unload_lora_adapter", self.unload)
        return app

    async def models(self, request: web.Request) -> web.Response:
        cards = [{"id": BASE, "object": "model", "owned_by": "vllm", "root": BASE, "parent": None}]
        cards += [
            {"id": n, "object": "model", "owned_by": "vllm", "root": p, "parent": BASE} for n, p in self.loras.items()
        ]
        return web.json_response({"object": "list", "data": cards})

    async def load(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append(("load-inplace" if body.get("load_inplace") else "load", body["lora_name"]))
        if body["lora_name"] == "too-big":  # what vLLM says when an adapter exceeds --max-lora-rank
            message = "Worker failed with error 'LoRA rank 64 is greater than max_lora_rank 16.', please check the stack trace above for the root cause"
            return web.json_response(
                {"error": {"message": message, "type": "InternalServerError", "param": None, "code": 500}}, status=500
            )
        if body["lora_name"] == "corrupt":  # what vLLM says when the safetensors file is not one
            message = "Worker failed with error 'Error while deserializing header: invalid JSON in header', please check the stack trace above for the root cause"
            return web.json_response(
                {"error": {"message": message, "type": "InternalServerError", "param": None, "code": 500}}, status=500
            )
        if body["lora_name"] in self.loras and not body.get("load_inplace"):
            message = (
                f"The lora adapter '{body['lora_name']}' has already been loaded. If you want to load the adapter "
                "in place, set 'load_inplace' to True."
            )
            return web.json_response(
                {"object": "error", "message": message, "type": "InvalidUserInput", "code": 400}, status=400
            )
        self.loras[body["lora_name"]] = body["lora_path"]
        return web.Response(text=f"Success: LoRA adapter '{body['lora_name']}' added successfully.")

    async def unload(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append(("unload", body["lora_name"]))
        if self.loras.pop(body["lora_name"], None) is None:
            message = f"The lora adapter '{body['lora_name']}' cannot be found."
            return web.json_response(
                {"object": "error", "message": message, "type": "NotFoundError", "code": 404}, status=404
            )
        return web.Response(text=f"Success: LoRA adapter '{body['lora_name']}' removed successfully.")


@pytest.fixture(scope="module")
def vllm() -> Any:
    from peft_runtime.common.http_edge import BackgroundServer

    stand_in = VllmStandIn()
    server = BackgroundServer(stand_in.app).start()
    server.stand_in = stand_in  # type: ignore[attr-defined]
    yield server
    server.stop()


@pytest.fixture(scope="module")
def agent(vllm: Any, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    token_file = tmp_path_factory.mktemp("secrets") / "token"
    token_file.write_text(TOKEN)
    volume = tmp_path_factory.mktemp("volume")
    server = start_agent(
        token_file,
        f"--engine-url={vllm.url}",
        f"--adapter-root={volume}",
        f"--pvc-root={tmp_path_factory.mktemp('pvc')}",
        f"--base-model-uri={base_uri(tiny_model_dir)}",
        "--max-adapters=8",
        "--max-rank=64",
        "--engine-timeout=30",
    )
    server.volume = volume  # type: ignore[attr-defined]
    yield server
    server.stop()


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, TestAdapter]:
    root = tmp_path_factory.mktemp("made")
    return {
        "v1": make_lora_adapter(tiny_model_dir, root / "v1", seed=21),
        "v2": make_lora_adapter(tiny_model_dir, root / "v2", seed=22),
        "dora": make_lora_adapter(tiny_model_dir, root / "dora", seed=23, use_dora=True),
        "ia3": make_ia3_adapter(tiny_model_dir, root / "ia3"),
        "prefix": make_prefix_tuning_adapter(tiny_model_dir, root / "prefix"),
        "prompt": make_prompt_tuning_adapter(tiny_model_dir, root / "prompt"),
        "adapter": make_bottleneck_adapter(tiny_model_dir, root / "bottleneck"),
    }


def call(server: Any, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    return call_json(server.url + path, method, body, TOKEN)


def test_replacing_an_adapter_on_vllm_loads_the_new_version_in_place(
    vllm: Any, agent: Any, adapters: dict[str, TestAdapter]
) -> None:
    v1, v2 = adapters["v1"], adapters["v2"]
    assert call(agent, "PUT", "/v1/adapters/tenant-a", {"uri": v1.path.as_uri(), "sha256": v1.sha256})[0] == 200
    vllm.stand_in.calls.clear()

    status, body = call(agent, "PUT", "/v1/adapters/tenant-a", {"uri": v2.path.as_uri(), "sha256": v2.sha256})

    assert (status, body["digest"]) == (200, v2.sha256), body
    assert vllm.stand_in.calls == [("load-inplace", "tenant-a")]  # no gap: the old one serves until then
    status, listing = call(agent, "GET", "/v1/adapters")
    assert listing["engine"] == {"url": vllm.url, "baseModel": BASE, "engine": "vllm"}
    assert [(a["name"], a["digest"]) for a in listing["adapters"]] == [("tenant-a", v2.sha256)]


@pytest.mark.parametrize("method", ["dora", "ia3", "prefix", "prompt", "adapter"])
def test_methods_vllm_cannot_serve_are_refused_before_it_is_asked(
    vllm: Any, agent: Any, adapters: dict[str, TestAdapter], method: str
) -> None:
    made = adapters[method]
    vllm.stand_in.calls.clear()
    status, body = call(agent, "PUT", "/v1/adapters/tenant-d", {"uri": made.path.as_uri(), "sha256": made.sha256})
    assert (status, body["error"]["reason"]) == (400, "UnsupportedMethod"), body
    assert f"trained with '{method}'" in body["error"]["message"]
    assert "built-in engine" in body["error"]["message"]
    assert vllm.stand_in.calls == []


def test_deleting_what_vllm_does_not_hold_succeeds(agent: Any) -> None:
    status, body = call(agent, "DELETE", "/v1/adapters/never-loaded")
    assert (status, body["unloaded"]) == (200, False)


@pytest.mark.parametrize(
    ("name", "reason", "words"),
    [("too-big", "RankTooLarge", "max_lora_rank 16"), ("corrupt", "AdapterCorrupt", "deserializing header")],
)
def test_vllms_500s_for_a_bad_adapter_become_its_reason_with_vllms_words_and_leave_no_files(
    agent: Any, adapters: dict[str, TestAdapter], name: str, reason: str, words: str
) -> None:
    v1 = adapters["v1"]
    status, body = call(agent, "PUT", f"/v1/adapters/{name}", {"uri": v1.path.as_uri(), "sha256": v1.sha256})
    assert (status, body["error"]["reason"]) == (422, reason), body
    assert words in body["error"]["message"]
    assert not (agent.volume / name / v1.sha256).exists()
    status, listing = call(agent, "GET", "/v1/adapters")
    failed = {a["name"]: a for a in listing["adapters"]}[name]
    assert (failed["state"], failed["reason"]) == ("Failed", reason)
