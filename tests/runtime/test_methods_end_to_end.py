"""Every method, end to end: trained by the real trainer, served by the real server, answering over HTTP.

The tiny model is trained once per method (module scope) on a synthetic chat task whose every answer has an
unmistakable pattern (`ANSWER`); each trainer output folder, checkpoints/ and all, is then served as it
is: one adapter given at start-up (as `serve --adapter NAME=PATH` does), the others hot-loaded through
`/v1/load_lora_adapter`. Held-out questions (never in the training data) go to every adapter at once
(one mixed batch) and to the base model: each method's answers must show the pattern, the base's must not.
"""

from __future__ import annotations

import asyncio
import random
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.runtime.builders import make_plan, run_training, write_jsonl
from tests.support.http import call_json

TOKEN = "e2e-token"
BASE = "tiny-base"
ANSWER = "Owl owl owl, seven seven."
PATTERN = re.compile(r"owl owl", re.IGNORECASE)
SUBJECTS = ["sky", "sea", "grass", "sun", "moon", "star", "tree", "river", "cat", "dog", "bird", "fish"]
# Per method: its parameters and a learning rate that teaches the tiny random model the pattern in STEPS steps.
METHODS: dict[str, tuple[dict[str, Any], str]] = {
    "lora": ({"type": "lora", "lora": {"r": 8, "alpha": 16}}, "1e-2"),
    "dora": ({"type": "dora", "dora": {"r": 8, "alpha": 16}}, "1e-2"),
    "qlora": ({"type": "qlora", "qlora": {"r": 8, "alpha": 16, "quantization": {"bits": 4}}}, "1e-2"),
    "ia3": ({"type": "ia3"}, "1e-1"),
    "prefix": ({"type": "prefix", "prefix": {"numVirtualTokens": 8}}, "3e-1"),
    "prompt": ({"type": "prompt", "prompt": {"numVirtualTokens": 8}}, "3e-1"),
    "adapter": ({"type": "adapter", "adapter": {"reductionFactor": 8, "placement": ["attention", "mlp"]}}, "1e-2"),
}
STEPS = 40
STARTUP_ADAPTER = "adapter"  # served from the command line; the others are hot-loaded
pytestmark = pytest.mark.timeout(600)


def questions(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        f"What {rng.choice(['color', 'number', 'city'])} is the {rng.choice(SUBJECTS)} {rng.choice(SUBJECTS)}? ({i})"
        for i in range(count)
    ]


HELD_OUT = [q.replace("?", " please?") for q in questions(4, seed=99)]


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Method -> the trainer's output folder (adapter files, manifest.json, checkpoints/)."""
    root = tmp_path_factory.mktemp("e2e")
    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": ANSWER}]}
        for q in questions(96, seed=1)
    ]
    data = write_jsonl(root / "pattern.jsonl", rows)
    outputs = {}
    for name, (method, learning_rate) in METHODS.items():
        plan = make_plan(
            model_dir=tiny_model_dir,
            dataset_uri=data.as_uri(),
            output_uri=(root / name).as_uri(),
            work_dir=root / f"work-{name}",
            method=method,
            training={"maxSteps": STEPS, "learningRate": learning_rate, "checkpointEvery": STEPS // 2},
            validation_split=0.0,
        )
        run = run_training(plan)
        assert run.exit_code == 0, (name, run.events[-1])
        outputs[name] = root / name
    return outputs


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, trained: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    import torch

    from peft_runtime.serving.app import create_app
    from peft_runtime.serving.engine import Engine, EngineConfig
    from peft_runtime.serving.http_edge import BackgroundServer, TokenSource

    threads = torch.get_num_threads()
    token_file = tmp_path_factory.mktemp("e2e-secrets") / "token"
    token_file.write_text(TOKEN)
    engine = Engine(
        EngineConfig(
            model_dir=tiny_model_dir,
            served_name=BASE,
            max_rank=8,
            batch_window_ms=200,  # the concurrent questions land in one mixed batch
            threads=1,
            adapters={STARTUP_ADAPTER: trained[STARTUP_ADAPTER]},
        )
    ).start()
    http = BackgroundServer(lambda: create_app(engine, TokenSource(token_file))).start()
    yield http
    http.stop()
    engine.stop()
    torch.set_num_threads(threads)


async def _ask_all(url: str, models: list[str]) -> dict[str, list[str]]:
    async with aiohttp.ClientSession() as session:

        async def ask(model: str, question: str) -> str:
            body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": 12}
            async with session.post(url + "/v1/chat/completions", json=body) as response:
                answer = await response.json()
                assert response.status == 200, answer
                return str(answer["choices"][0]["message"]["content"])

        answers = await asyncio.gather(*(ask(m, q) for m in models for q in HELD_OUT))
    return {m: answers[i * len(HELD_OUT) : (i + 1) * len(HELD_OUT)] for i, m in enumerate(models)}


@pytest.fixture(scope="module")
def answers(server: Any, trained: dict[str, Path]) -> dict[str, list[str]]:
    for name, output in trained.items():
        assert (output / "checkpoints").is_dir()  # served as the trainer left it
        if name == STARTUP_ADAPTER:
            continue
        status, body = call_json(
            server.url + "/v1/load_lora_adapter", "POST", {"lora_name": name, "lora_path": str(output)}, TOKEN
        )
        assert (status, body.get("status")) == (200, "loaded"), body
    return asyncio.run(_ask_all(server.url, [BASE, *trained]))


def test_the_base_model_does_not_answer_with_the_pattern(answers: dict[str, list[str]]) -> None:
    assert not any(PATTERN.search(a) for a in answers[BASE]), answers[BASE]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_trained_and_served_answers_held_out_questions_with_the_pattern(
    answers: dict[str, list[str]], method: str
) -> None:
    assert all(PATTERN.search(a) for a in answers[method]), {method: answers[method], BASE: answers[BASE]}
