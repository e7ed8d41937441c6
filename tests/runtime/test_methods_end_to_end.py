"""Every method, end to end on the tiny model (see end_to_end.py): trained by the real trainer, its output
folder (checkpoints/ and all) served as it is by the real server, held-out questions answered over HTTP in
one mixed batch. Each method's answers must show the trained pattern; the base model's must not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.runtime.end_to_end import BASE, PATTERN, ask_all, serving, train_each_method

# Per method: its parameters and a learning rate that teaches the tiny random model the pattern in 40 steps.
METHODS: dict[str, tuple[dict[str, Any], str]] = {
    "lora": ({"type": "lora", "lora": {"r": 8, "alpha": 16}}, "1e-2"),
    "dora": ({"type": "dora", "dora": {"r": 8, "alpha": 16}}, "1e-2"),
    "qlora": ({"type": "qlora", "qlora": {"r": 8, "alpha": 16, "quantization": {"bits": 4}}}, "1e-2"),
    "ia3": ({"type": "ia3"}, "1e-1"),
    "prefix": ({"type": "prefix", "prefix": {"numVirtualTokens": 8}}, "3e-1"),
    "prompt": ({"type": "prompt", "prompt": {"numVirtualTokens": 8}}, "3e-1"),
    "adapter": ({"type": "adapter", "adapter": {"reductionFactor": 8, "placement": ["attention", "mlp"]}}, "1e-2"),
}
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def answers(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    root = tmp_path_factory.mktemp("e2e")
    outputs = train_each_method(tiny_model_dir, root, METHODS, {"maxSteps": 40, "checkpointEvery": 20})
    assert all((output / "checkpoints").is_dir() for output in outputs.values())  # served as the trainer left it
    with serving(tiny_model_dir, outputs, root / "token") as url:
        return ask_all(url, [BASE, *outputs])


def test_the_base_model_does_not_answer_with_the_pattern(answers: dict[str, list[str]]) -> None:
    assert not any(PATTERN.search(a) for a in answers[BASE]), answers[BASE]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_trained_and_served_answers_held_out_questions_with_the_pattern(
    answers: dict[str, list[str]], method: str
) -> None:
    assert all(PATTERN.search(a) for a in answers[method]), {method: answers[method], BASE: answers[BASE]}
