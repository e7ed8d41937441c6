"""The built-in multi-adapter server over real HTTP on loopback, with a real tiny Llama and real peft adapters.

One server per module (loading the model costs seconds); tests leave the adapters they load behind only
under names no other test uses, and unload the rest.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.adapters import (
    base_uri,
    corrupt_weights,
    make_loha_adapter,
    make_lora_adapter,
    reference_generate,
    rewrite_manifest,
)
from tests.support.builtin_server import builtin_server
from tests.support.http import call_json

TOKEN = "test-admin-token"
BASE = "tiny-base"
MAX_ADAPTERS = 6
PROMPTS = ["The capital of france is", "Hello, please reset my password"]
pytestmark = pytest.mark.timeout(120)


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    made = {
        "tenant-a": make_lora_adapter(tiny_model_dir, root / "a", seed=1).path,
        "tenant-b": make_lora_adapter(
            tiny_model_dir,
            root / "b",
            seed=2,
            r=8,
            target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "down_proj"),
        ).path,
        "tenant-dora": make_lora_adapter(tiny_model_dir, root / "dora", seed=3, use_dora=True).path,
        "tenant-a2": make_lora_adapter(tiny_model_dir, root / "a2", seed=10).path,
        "tenant-head": make_lora_adapter(tiny_model_dir, root / "head", seed=8, modules_to_save=("lm_head",)).path,
        "tenant-embed": make_lora_adapter(
            tiny_model_dir, root / "emb", seed=9, target_modules=("embed_tokens", "q_proj")
        ).path,
        "rank-16": make_lora_adapter(tiny_model_dir, root / "r16", seed=4, r=16).path,
        "other-base": make_lora_adapter(tiny_model_dir, root / "other", seed=5, uri="hf://someone/else").path,
        "loha": make_loha_adapter(tiny_model_dir, root / "loha").path,
    }
    corrupt = make_lora_adapter(tiny_model_dir, root / "corrupt", seed=6).path
    corrupt_weights(corrupt, keep_manifest_valid=True)
    tampered = make_lora_adapter(tiny_model_dir, root / "tampered", seed=7).path
    corrupt_weights(tampered, keep_manifest_valid=False)
    return {**made, "corrupt": corrupt, "tampered": tampered}


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    token_file = tmp_path_factory.mktemp("secrets") / "token"
    token_file.write_text(TOKEN + "\n")
    with builtin_server(
        tiny_model_dir,
        token_file,
        served_name=BASE,
        base_model_uri=base_uri(tiny_model_dir),
        max_adapters=MAX_ADAPTERS,
        max_rank=8,
        batch_window_ms=20,
        threads=1,  # tiny matrices: one thread beats two that contend on a shared 2-core machine
    ) as http:
        yield http


# --------------------------------------------------------------------------------------------- HTTP


def call(server: Any, method: str, path: str, body: Any = None, token: str | None = TOKEN) -> tuple[int, Any]:
    return call_json(server.url + path, method, body, token)


def load(server: Any, name: str, path: Path, token: str | None = TOKEN) -> tuple[int, Any]:
    return call(server, "POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)}, token)


def unload(server: Any, name: str) -> tuple[int, Any]:
    return call(server, "POST", "/v1/unload_lora_adapter", {"lora_name": name})


def complete(server: Any, model: str, prompt: str, max_tokens: int = 12, **extra: Any) -> str:
    status, body = call(
        server, "POST", "/v1/completions", {"model": model, "prompt": prompt, "max_tokens": max_tokens, **extra}
    )
    assert status == 200, body
    return str(body["choices"][0]["text"])


def sse_events(raw: str) -> list[Any]:
    events = [line.removeprefix("data: ") for line in raw.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


# --------------------------------------------------------------------------------------------- tests


def test_adapter_loads_answers_differently_and_unloads(server: Any, adapters: dict[str, Path]) -> None:
    status, body = load(server, "tenant-a", adapters["tenant-a"])
    assert (status, body["status"]) == (200, "loaded"), body
    status, body = load(server, "tenant-a", adapters["tenant-a"])  # the operator retries: a no-op
    assert (status, body["status"]) == (200, "unchanged")

    base_text = complete(server, BASE, PROMPTS[0])
    adapted = complete(server, "tenant-a", PROMPTS[0])
    assert adapted != base_text

    assert unload(server, "tenant-a")[0] == 200
    status, body = call(server, "POST", "/v1/completions", {"model": "tenant-a", "prompt": PROMPTS[0]})
    assert (status, body["error"]["reason"]) == (404, "ModelNotFound")
    status, body = unload(server, "tenant-a")
    assert (status, body["error"]["reason"]) == (404, "AdapterNotFound")


def test_mixed_batch_gives_each_row_its_own_adapters_output(
    server: Any, adapters: dict[str, Path], tiny_model_dir: Path
) -> None:
    # LoRA, LoRA of another rank on more modules, DoRA, LoRA + a trained lm_head copy, LoRA on the embeddings
    for name in ("tenant-a", "tenant-b", "tenant-dora", "tenant-head", "tenant-embed"):
        assert load(server, name, adapters[name])[0] == 200, name
    models = {
        BASE: None,
        **{name: adapters[name] for name in ("tenant-a", "tenant-b", "tenant-dora", "tenant-head", "tenant-embed")},
    }
    jobs = [(model, prompt) for model in models for prompt in PROMPTS]

    async def all_at_once() -> list[str]:
        async with aiohttp.ClientSession() as session:

            async def one(model: str, prompt: str) -> str:
                body = {"model": model, "prompt": prompt, "max_tokens": 10}
                async with session.post(server.url + "/v1/completions", json=body) as response:
                    assert response.status == 200, await response.text()
                    return str((await response.json())["choices"][0]["text"])

            return await asyncio.gather(*(one(m, p) for m, p in jobs))

    before = _metric(server, "peft_serve_batch_rows_count")
    texts = asyncio.run(all_at_once())
    steps = _metric(server, "peft_serve_batch_rows_count") - before
    assert steps <= 30, f"{len(jobs)} requests of 10 tokens took {steps} steps: they were not batched together"
    # peft's own single-adapter generate is the reference (PeftModel.from_pretrained + generate, greedy)
    expected = {m: reference_generate(tiny_model_dir, path, PROMPTS, 10) for m, path in models.items()}
    for (model, prompt), text in zip(jobs, texts, strict=True):
        assert text == expected[model][PROMPTS.index(prompt)], (model, prompt)
    assert len({t for (m, p), t in zip(jobs, texts, strict=True) if p == PROMPTS[0]}) == len(models)  # all differ
    for name in ("tenant-head", "tenant-embed"):
        assert unload(server, name)[0] == 200


def test_admin_routes_need_the_bearer_token(server: Any, adapters: dict[str, Path]) -> None:
    for token in (None, "wrong-token"):
        status, body = load(server, "sneaky", adapters["tenant-a"], token=token)
        assert (status, body["error"]["reason"]) == (401, "Unauthorized")
        status, body = call(server, "POST", "/v1/unload_lora_adapter", {"lora_name": "tenant-a"}, token=token)
        assert status == 401
    assert call(server, "GET", "/v1/models", token=None)[0] == 200  # inference routes stay open


@pytest.mark.parametrize(
    ("adapter", "status", "reason"),
    [
        ("rank-16", 422, "RankTooLarge"),
        ("other-base", 422, "IncompatibleBaseModel"),
        ("corrupt", 422, "AdapterCorrupt"),
        ("tampered", 422, "ChecksumMismatch"),
        ("loha", 400, "UnsupportedMethod"),
    ],
)
def test_bad_adapter_is_refused_and_the_others_keep_serving(
    server: Any, adapters: dict[str, Path], adapter: str, status: int, reason: str
) -> None:
    assert load(server, "tenant-a", adapters["tenant-a"])[0] == 200
    before = complete(server, "tenant-a", PROMPTS[1])

    got_status, body = load(server, "bad-one", adapters[adapter])

    assert (got_status, body["error"]["reason"]) == (status, reason), body
    assert body["error"]["message"]
    assert complete(server, "tenant-a", PROMPTS[1]) == before
    names = [m["id"] for m in call(server, "GET", "/v1/models")[1]["data"]]
    assert "bad-one" not in names


def test_a_training_output_folder_serves_as_it_is(server: Any, adapters: dict[str, Path], tmp_path: Path) -> None:
    output = tmp_path / "out"
    shutil.copytree(adapters["tenant-a"], output)
    for folder in ("checkpoints/step-10", "merged", ".step-12.partial-ab12"):  # what the trainer leaves beside it
        (output / folder).mkdir(parents=True)
        (output / folder / "adapter_model.safetensors").write_bytes(b"not the adapter")
    (output / "notes.txt").write_text("not in the manifest")

    status, body = load(server, "from-output", output)

    assert (status, body.get("status")) == (200, "loaded"), body
    assert load(server, "tenant-a", adapters["tenant-a"])[0] == 200
    assert complete(server, "from-output", PROMPTS[0]) == complete(server, "tenant-a", PROMPTS[0])
    assert unload(server, "from-output")[0] == 200


def test_weights_the_manifest_does_not_list_are_refused(server: Any, adapters: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "unlisted"
    shutil.copytree(adapters["tenant-a"], folder)
    files = json.loads((folder / "manifest.json").read_text())["files"]
    rewrite_manifest(folder, files={k: v for k, v in files.items() if k != "adapter_model.safetensors"})

    status, body = load(server, "unlisted", folder)

    assert (status, body["error"]["reason"]) == (422, "ChecksumMismatch"), body
    assert "adapter_model.safetensors" in body["error"]["message"]


def test_load_refuses_unknown_paths_and_the_base_models_name(
    server: Any, tmp_path: Path, adapters: dict[str, Path]
) -> None:
    status, body = load(server, "ghost", tmp_path / "missing")
    assert (status, body["error"]["reason"]) == (400, "BadRequest")
    status, body = load(server, BASE, adapters["tenant-a"])
    assert (status, body["error"]["reason"]) == (409, "NameConflict")
    status, body = call(server, "POST", "/v1/load_lora_adapter", {"lora_name": "../x", "lora_path": "/tmp"})
    assert status == 400


def test_max_adapters_is_enforced(server: Any, adapters: dict[str, Path]) -> None:
    loaded = {m["id"] for m in call(server, "GET", "/v1/models")[1]["data"] if m.get("parent")}
    for i in range(MAX_ADAPTERS - len(loaded)):
        assert load(server, f"filler-{i}", adapters["tenant-a"])[0] == 200
    status, body = load(server, "one-too-many", adapters["tenant-b"])
    assert (status, body["error"]["reason"]) == (507, "TooManyAdapters")
    for i in range(MAX_ADAPTERS - len(loaded)):
        assert unload(server, f"filler-{i}")[0] == 200


def test_same_name_with_another_path_replaces_the_adapter(server: Any, adapters: dict[str, Path]) -> None:
    assert load(server, "swap", adapters["tenant-a"])[0] == 200
    first = complete(server, "swap", PROMPTS[0])
    status, body = load(server, "swap", adapters["tenant-b"])
    assert (status, body["status"]) == (200, "replaced")
    assert complete(server, "swap", PROMPTS[0]) == complete(server, "tenant-b", PROMPTS[0]) != first
    assert unload(server, "swap")[0] == 200


def test_streaming_sends_the_same_text_in_chunks(server: Any, adapters: dict[str, Path]) -> None:
    assert load(server, "tenant-a", adapters["tenant-a"])[0] == 200
    whole = complete(server, "tenant-a", PROMPTS[0], max_tokens=16)
    status, raw = call(
        server,
        "POST",
        "/v1/completions",
        {
            "model": "tenant-a",
            "prompt": PROMPTS[0],
            "max_tokens": 16,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert status == 200
    events = sse_events(raw)
    assert "".join(e["choices"][0]["text"] for e in events if e["choices"]) == whole
    assert events[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    assert events[-1]["usage"]["completion_tokens"] >= 1


def test_chat_completion_uses_the_chat_template_and_streams(server: Any, adapters: dict[str, Path]) -> None:
    assert load(server, "tenant-a", adapters["tenant-a"])[0] == 200
    messages = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "What color is the sky?"},
    ]
    status, body = call(
        server, "POST", "/v1/chat/completions", {"model": "tenant-a", "messages": messages, "max_tokens": 8}
    )
    assert status == 200, body
    assert body["object"] == "chat.completion"
    assert body["usage"]["prompt_tokens"] > 10  # the template's markers are part of the prompt
    text = body["choices"][0]["message"]["content"]

    status, raw = call(
        server,
        "POST",
        "/v1/chat/completions",
        {"model": "tenant-a", "messages": messages, "max_tokens": 8, "stream": True},
    )
    events = sse_events(raw)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == text
    assert events[-1]["choices"][0]["finish_reason"] is not None


def test_stop_sequences_and_max_tokens_end_generation(server: Any) -> None:
    text = complete(server, BASE, PROMPTS[0], max_tokens=20)
    assert len(text) > 2
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    _, body = call(
        server, "POST", "/v1/completions", {"model": BASE, "prompt": PROMPTS[0], "max_tokens": 20, "stop": [stop]}
    )
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["text"] == text[: text.find(stop)]
    _, body = call(server, "POST", "/v1/completions", {"model": BASE, "prompt": PROMPTS[0], "max_tokens": 3})
    assert body["choices"][0]["finish_reason"] in ("length", "stop")
    assert body["usage"]["completion_tokens"] <= 3


def test_seeded_sampling_is_reproducible(server: Any) -> None:
    body = {"temperature": 1.0, "top_p": 0.9, "seed": 1234}
    first = complete(server, BASE, PROMPTS[1], max_tokens=12, **body)
    assert complete(server, BASE, PROMPTS[1], max_tokens=12, **body) == first


def test_bad_requests_get_400_and_unknown_models_404(server: Any) -> None:
    assert call(server, "POST", "/v1/completions", {"model": "nobody", "prompt": "x"})[0] == 404
    for body in (
        {"prompt": "x", "n": 0},
        {"prompt": "x", "n": 17},  # more choices than MAX_CHOICES
        {"prompt": "x", "max_tokens": 0},
        {"prompt": "x", "max_tokens": 5000},  # beyond the context
        {"prompt": "x", "logprobs": 21},  # more than OpenAI's 20 alternatives
        {"no_prompt": True},
    ):
        status, answer = call(server, "POST", "/v1/completions", body)
        assert (status, answer["error"]["reason"]) == (400, "BadRequest"), body
    status, _ = asyncio.run(_raw_post(server.url + "/v1/completions", b"{not json"))
    assert status == 400


def test_models_lists_adapters_under_the_base_and_metrics_count_them(server: Any, adapters: dict[str, Path]) -> None:
    assert load(server, "tenant-a", adapters["tenant-a"])[0] == 200
    complete(server, "tenant-a", PROMPTS[0], max_tokens=4)
    cards = {m["id"]: m for m in call(server, "GET", "/v1/models")[1]["data"]}
    assert cards[BASE].get("parent") is None
    assert cards["tenant-a"]["parent"] == BASE
    assert cards["tenant-a"]["root"] == str(adapters["tenant-a"])

    status, text = call(server, "GET", "/metrics")
    assert status == 200
    assert 'peft_serve_requests_total{model="tenant-a",status="ok"}' in text
    assert 'peft_serve_generation_tokens_total{model="tenant-a"}' in text
    assert 'peft_serve_request_latency_seconds_bucket{le="0.01",model="tenant-a"}' in text
    assert _metric(server, "peft_serve_adapters_loaded") == len([c for c in cards.values() if c.get("parent")])
    assert call(server, "GET", "/health", token=None)[0] == 200


def test_loading_an_adapter_does_not_wait_for_running_generation(server: Any, adapters: dict[str, Path]) -> None:
    assert load(server, "tenant-a", adapters["tenant-a"])[0] == 200
    unload(server, "late-arrival")
    finished: dict[str, float] = {}

    def long_generation() -> None:
        call(
            server,
            "POST",
            "/v1/completions",
            {"model": "tenant-a", "prompt": PROMPTS[0], "max_tokens": 400, "ignore_eos": True},
        )
        finished["generation"] = time.monotonic()

    worker = threading.Thread(target=long_generation)
    worker.start()
    time.sleep(0.3)  # the generation is running
    status, body = load(server, "late-arrival", adapters["tenant-b"])
    finished["load"] = time.monotonic()
    answer = complete(server, "late-arrival", PROMPTS[0], max_tokens=4)  # joins the running batch
    finished["answer"] = time.monotonic()
    worker.join()
    assert status == 200, body
    assert answer
    assert finished["load"] < finished["answer"] < finished["generation"]
    assert unload(server, "late-arrival")[0] == 200


def test_a_load_onto_already_wrapped_layers_does_not_need_the_model_lock(
    server: Any, adapters: dict[str, Path]
) -> None:
    assert load(server, "tenant-a", adapters["tenant-a"])[0] == 200  # q_proj and v_proj are LoRA layers now
    unload(server, "lock-free")
    registry = server.engine.registry
    held, release = threading.Event(), threading.Event()

    def long_forward_step() -> None:  # what the generation thread does while it computes a step
        with registry.model_lock:
            held.set()
            release.wait(30)

    holder = threading.Thread(target=long_forward_step)
    holder.start()
    held.wait(5)
    try:
        status, body = call_json(
            server.url + "/v1/load_lora_adapter",
            "POST",
            {"lora_name": "lock-free", "lora_path": str(adapters["tenant-a2"])},
            TOKEN,
            timeout=20,
        )
    finally:
        release.set()
        holder.join()
    assert (status, body["status"]) == (200, "loaded"), body
    assert complete(server, "lock-free", PROMPTS[0]) != complete(server, "tenant-a", PROMPTS[0])
    assert unload(server, "lock-free")[0] == 200


# --------------------------------------------------------------------------------------------- helpers


async def _raw_post(url: str, data: bytes) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.post(url, data=data) as response:
        return response.status, await response.text()


def _metric(server: Any, name: str) -> float:
    _, text = call(server, "GET", "/metrics")
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
