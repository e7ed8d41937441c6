"""Every method the trainer produces, hot-loaded into the built-in server and answering in mixed batches.

Adapters here are made directly (random, non-zero weights, so each really changes the answers); each
method's rows in one mixed batch must equal, token for token, the adapter applied one prompt at a time:
peft's own generate for the methods where it works (LoRA, IA3), and a full forward pass per token without a
KV cache for bottleneck adapters, prefix and prompt tuning (peft's generate ignores a learned prefix and
loses a soft prompt after the first token with the pinned versions; see serving/virtual_tokens.py).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.adapters import (
    base_uri,
    make_bottleneck_adapter,
    make_ia3_adapter,
    make_lora_adapter,
    make_prefix_tuning_adapter,
    make_prompt_tuning_adapter,
    reference_generate,
    reference_generate_without_cache,
    rewrite_manifest,
)
from tests.support.builtin_server import builtin_server
from tests.support.http import call_json

TOKEN = "methods-token"
BASE = "tiny-base"
PROMPTS = ["The capital of france is", "Hello, please reset my password", "what is the"]
TOKENS = 8
pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("method-adapters")
    return {
        "lora": make_lora_adapter(tiny_model_dir, root / "lora", seed=1).path,
        "ia3": make_ia3_adapter(tiny_model_dir, root / "ia3", seed=2).path,
        "ia3-b": make_ia3_adapter(tiny_model_dir, root / "ia3-b", seed=7).path,
        "bottleneck": make_bottleneck_adapter(tiny_model_dir, root / "bottleneck", seed=3).path,
        "bottleneck-b": make_bottleneck_adapter(tiny_model_dir, root / "bottleneck-b", seed=8).path,
        "prefix": make_prefix_tuning_adapter(tiny_model_dir, root / "prefix", seed=4, tokens=4).path,
        "prefix-long": make_prefix_tuning_adapter(tiny_model_dir, root / "prefix-long", seed=5, tokens=7).path,
        "prompt": make_prompt_tuning_adapter(tiny_model_dir, root / "prompt", seed=6, tokens=5).path,
    }


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, adapters: dict[str, Path]) -> Iterator[Any]:
    token_file = tmp_path_factory.mktemp("methods-secrets") / "token"
    token_file.write_text(TOKEN)
    with builtin_server(
        tiny_model_dir,
        token_file,
        served_name=BASE,
        base_model_uri=base_uri(tiny_model_dir),
        max_rank=8,
        batch_window_ms=200,  # the test's concurrent requests land in one prefill
        threads=1,
    ) as http:
        for name, path in adapters.items():
            status, body = call_json(
                http.url + "/v1/load_lora_adapter", "POST", {"lora_name": name, "lora_path": str(path)}, TOKEN
            )
            assert (status, body.get("status")) == (200, "loaded"), body
        yield http


async def _complete_all(url: str, requests: list[tuple[str, str]]) -> list[str]:
    async with aiohttp.ClientSession() as session:

        async def one(model: str, prompt: str) -> str:
            body = {"model": model, "prompt": prompt, "max_tokens": TOKENS}
            async with session.post(url + "/v1/completions", json=body) as response:
                answer = await response.json()
                assert response.status == 200, answer
                return str(answer["choices"][0]["text"])

        return await asyncio.gather(*(one(model, prompt) for model, prompt in requests))


def test_every_method_answers_in_one_mixed_batch_as_it_does_alone(
    server: Any, adapters: dict[str, Path], tiny_model_dir: Path
) -> None:
    models = [BASE, *adapters]
    requests = [(model, prompt) for model in models for prompt in PROMPTS]
    answers = asyncio.run(_complete_all(server.url, requests))
    served = {model: answers[i * len(PROMPTS) : (i + 1) * len(PROMPTS)] for i, model in enumerate(models)}

    expected = {
        BASE: reference_generate(tiny_model_dir, None, PROMPTS, TOKENS),
        "lora": reference_generate(tiny_model_dir, adapters["lora"], PROMPTS, TOKENS),
        "ia3": reference_generate(tiny_model_dir, adapters["ia3"], PROMPTS, TOKENS),
        "ia3-b": reference_generate(tiny_model_dir, adapters["ia3-b"], PROMPTS, TOKENS),
    }
    for name in ("bottleneck", "bottleneck-b", "prefix", "prefix-long", "prompt"):
        expected[name] = reference_generate_without_cache(tiny_model_dir, adapters[name], PROMPTS, TOKENS)
    assert served == expected
    for name in adapters:  # each adapter really changes the answers
        assert served[name] != served[BASE], name


def _widen(tensors: dict[str, Any]) -> dict[str, Any]:
    import torch

    return {key: torch.cat([value, value[:, :1]], 1) for key, value in tensors.items()}


def _retarget_to_missing_module(tensors: dict[str, Any]) -> dict[str, Any]:
    return {key.replace(".k_proj.", ".wk."): value for key, value in tensors.items()}


@pytest.mark.parametrize(
    ("adapter", "change_weights", "change_config"),
    [
        ("prefix", _widen, None),  # a KV-cache shape this model does not have
        ("prompt", _widen, None),  # another hidden size
        ("ia3", _retarget_to_missing_module, None),
        ("bottleneck", None, {"hidden_size": 128}),
    ],
)
def test_adapters_made_for_another_model_are_refused(
    server: Any, adapters: dict[str, Path], tmp_path: Path, adapter: str, change_weights: Any, change_config: Any
) -> None:
    from safetensors.torch import load_file, save_file

    folder = tmp_path / adapter
    shutil.copytree(adapters[adapter], folder)
    if change_weights is not None:
        weights = folder / "adapter_model.safetensors"
        save_file(change_weights(load_file(weights)), weights)
    if change_config is not None:
        config = folder / "adapter_config.json"
        config.write_text(json.dumps({**json.loads(config.read_text()), **change_config}))
    rewrite_manifest(folder)

    body = {"lora_name": f"misfit-{adapter}", "lora_path": str(folder)}
    status, answer = call_json(server.url + "/v1/load_lora_adapter", "POST", body, TOKEN)

    assert (status, answer["error"]["reason"]) == (422, "IncompatibleBaseModel"), answer
