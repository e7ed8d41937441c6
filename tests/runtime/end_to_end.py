"""Every method end to end, for any base model: train each with the real trainer on a synthetic chat task
whose answers all carry one unmistakable pattern, serve the trainer's output folders as they are (one given
at start-up, as `serve --adapter NAME=PATH` does, the others hot-loaded over HTTP), and ask every adapter and
the base model held-out questions in one mixed batch. Used by test_methods_end_to_end.py (tiny model, CI) and
test_methods_end_to_end_smollm2.py (SmolLM2, `make test-slow`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

from tests.runtime.builders import make_plan, run_training, write_jsonl
from tests.support.builtin_server import builtin_server
from tests.support.http import call_json

ANSWER = "Owl owl owl, seven seven."
PATTERN = re.compile(r"owl owl", re.IGNORECASE)
BASE = "base"
STARTUP_ADAPTER = "adapter"  # served from the start-up list; the others are hot-loaded
_TOKEN = "e2e-token"
_SUBJECTS = ["sky", "sea", "grass", "sun", "moon", "star", "tree", "river", "cat", "dog", "bird", "fish"]


def questions(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        f"What {rng.choice(['color', 'number', 'city'])} is the {rng.choice(_SUBJECTS)} {rng.choice(_SUBJECTS)}? ({i})"
        for i in range(count)
    ]


HELD_OUT = [q.replace("?", " please?") for q in questions(4, seed=99)]  # worded unlike any training question


def train_each_method(
    model_dir: Path, root: Path, methods: dict[str, tuple[dict[str, Any], str]], training: dict[str, Any]
) -> dict[str, Path]:
    """Method -> the trainer's output folder (adapter files, manifest.json, checkpoints/)."""
    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": ANSWER}]}
        for q in questions(96, seed=1)
    ]
    data = write_jsonl(root / "pattern.jsonl", rows)
    outputs = {}
    for name, (method, learning_rate) in methods.items():
        plan = make_plan(
            model_dir=model_dir,
            dataset_uri=data.as_uri(),
            output_uri=(root / name).as_uri(),
            work_dir=root / f"work-{name}",
            method=method,
            training={**training, "learningRate": learning_rate},
            validation_split=0.0,
        )
        run = run_training(plan)
        assert run.exit_code == 0, (name, run.events[-1])
        outputs[name] = root / name
    return outputs


@contextlib.contextmanager
def serving(model_dir: Path, outputs: dict[str, Path], token_file: Path) -> Iterator[str]:
    """The real server on loopback with every output folder loaded; yields its URL."""
    token_file.write_text(_TOKEN)
    with builtin_server(
        model_dir,
        token_file,
        served_name=BASE,
        batch_window_ms=200,  # the concurrent questions land in one mixed batch
        threads=1,
        adapters={STARTUP_ADAPTER: outputs[STARTUP_ADAPTER]},
    ) as http:
        for name, output in outputs.items():
            if name != STARTUP_ADAPTER:
                body = {"lora_name": name, "lora_path": str(output)}
                status, answer = call_json(http.url + "/v1/load_lora_adapter", "POST", body, _TOKEN)
                assert (status, answer.get("status")) == (200, "loaded"), answer
        yield http.url


def ask_all(url: str, models: list[str], max_tokens: int = 12) -> dict[str, list[str]]:
    """Every held-out question to every model, all at once (one mixed batch); model -> answers."""

    async def run() -> list[str]:
        async with aiohttp.ClientSession() as session:

            async def ask(model: str, question: str) -> str:
                body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens}
                async with session.post(url + "/v1/chat/completions", json=body) as response:
                    answer = await response.json()
                    assert response.status == 200, answer
                    return str(answer["choices"][0]["message"]["content"])

            return await asyncio.gather(*(ask(m, q) for m in models for q in HELD_OUT))

    answers = asyncio.run(run())
    return {m: answers[i * len(HELD_OUT) : (i + 1) * len(HELD_OUT)] for i, m in enumerate(models)}
