"""training.gradientCheckpointing: each transformer block's activations are recomputed in the backward pass
instead of kept. It changes how a step is computed, not what: for every method, 4 steps with it and without
it give the same losses and the same adapter (real trainer runs on the tiny model, in process). qlora has it
on unless the spec turns it off. Prefix tuning is not among them: peft refuses it, and so does the API
(examples/broken/prefix-gradient-checkpointing.yaml)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.runtime.builders import make_plan, run_training, varied_chat_rows, without_dropout, write_jsonl
from tests.runtime.test_methods import METHODS
from tests.support.adapters import assert_same_adapter

RELATIVE_TOLERANCE = 1e-4


@pytest.mark.parametrize("name", sorted(set(METHODS) - {"prefix"}))
def test_recomputing_activations_trains_the_same_adapter(name: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    method, learning_rate = METHODS[name]
    rows = write_jsonl(tmp_path / "chat.jsonl", varied_chat_rows(40))
    runs = {}
    for checkpointing in (True, False):
        root = tmp_path / str(checkpointing)
        plan = make_plan(
            model_dir=tiny_model_dir,
            dataset_uri=rows.as_uri(),
            output_uri=(root / "out").as_uri(),
            work_dir=root,
            method=without_dropout(method),
            training={
                "maxSteps": 4,
                "batchSize": 4,
                "learningRate": learning_rate,
                "checkpointEvery": 4,
                "gradientCheckpointing": checkpointing,
            },
        )
        runs[checkpointing] = run_training(plan)
        assert runs[checkpointing].exit_code == 0, runs[checkpointing].events[-1]
    print(f"{name}: losses recomputed {runs[True].losses}, kept {runs[False].losses}")
    assert runs[True].losses == pytest.approx(runs[False].losses, rel=RELATIVE_TOLERANCE)
    assert_same_adapter(tmp_path / "True" / "out", tmp_path / "False" / "out", RELATIVE_TOLERANCE)


def test_qlora_checkpoints_by_default_and_the_spec_can_turn_it_off(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch

    from peft_operator.api.methods import Method
    from peft_runtime.train.methods import MethodContext, method_setup

    qlora = method_setup(Method.model_validate(METHODS["qlora"][0]), MethodContext(tiny_model_dir, torch.device("cpu")))
    lora = method_setup(Method.model_validate(METHODS["lora"][0]), MethodContext(tiny_model_dir, torch.device("cpu")))
    assert qlora.gradient_checkpointing and not lora.gradient_checkpointing
