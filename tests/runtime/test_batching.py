"""Batching: no compute on padding, and packing or padding never changes what the model learns from a row."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from tests.runtime.builders import varied_chat_rows, write_jsonl


@pytest.fixture(scope="module")
def examples(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    from transformers import AutoTokenizer

    from peft_operator.api.finetunejob import DatasetFormat
    from peft_runtime.train.data import prepare_dataset

    path = write_jsonl(tmp_path_factory.mktemp("batching") / "chat.jsonl", varied_chat_rows(200))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return prepare_dataset([path], DatasetFormat.CHAT, tokenizer, 512).examples


@pytest.fixture(scope="module")
def model_and_setup(tiny_model_dir: Path) -> tuple[Any, Any]:
    import torch

    from peft_operator.api.methods import Method
    from peft_runtime.train.methods import MethodContext, attach_adapter, load_base_model, method_setup

    setup = method_setup(Method.model_validate({"type": "lora"}), MethodContext(tiny_model_dir, torch.device("cpu")))
    model = attach_adapter(load_base_model(tiny_model_dir, setup, torch.float32, torch.device("cpu")), setup)
    model.eval()
    return model, setup


def _loss(model_and_setup: tuple[Any, Any], batch: Any) -> float:
    import torch

    from peft_runtime.train.loss import AnswerLoss

    model, setup = model_and_setup
    with torch.no_grad():
        return float(AnswerLoss(model, setup)(batch))


def test_packed_and_padded_batches_give_the_same_loss_as_rows_alone(
    examples: list[Any], model_and_setup: tuple[Any, Any]
) -> None:
    from peft_runtime.train.batches import collate

    rows = [0, 1, 2, 3, 4]
    alone = sum(_loss(model_and_setup, collate(examples, [[i]], 0, packed=False)) for i in rows)
    padded = collate(examples, [[i] for i in rows], 0, packed=False)
    packed = collate(examples, [rows[:3], rows[3:]], 0, packed=True)
    assert padded.attention_mask is not None and packed.attention_mask is None
    assert packed.position_ids is not None and packed.input_ids.shape[0] == 2
    assert _loss(model_and_setup, padded) == pytest.approx(alone, rel=1e-5)
    assert _loss(model_and_setup, packed) == pytest.approx(alone, rel=1e-5)


def test_rows_of_similar_length_share_a_batch_so_padding_stays_small(examples: list[Any]) -> None:
    from peft_runtime.train.batches import EpochPlanner

    lengths = [len(e) for e in examples]
    planner = EpochPlanner(lengths, batch_size=8, seed=1, packing=False, max_seq_length=512)
    batches = planner.epoch(0)
    assert sorted(i for b in batches for s in b for i in s) == list(range(len(examples)))  # each row once
    real = sum(lengths)
    padded = sum(len(b) * max(lengths[s[0]] for s in b) for b in batches)
    shuffled = random.Random(1).sample(range(len(lengths)), len(lengths))
    random_batches = [shuffled[i : i + 8] for i in range(0, len(shuffled), 8)]
    padded_at_random = sum(len(b) * max(lengths[i] for i in b) for b in random_batches)
    assert padded / real < 1.1
    assert padded_at_random / real > 1.4  # what dynamic padding alone would cost on these rows
    assert planner.epoch(0) == batches  # seeded: a resumed run replays the same order
    assert planner.epoch(1) != batches  # and every epoch has its own order


def test_packing_fills_sequences_up_to_max_seq_length(examples: list[Any]) -> None:
    from peft_runtime.train.batches import EpochPlanner

    lengths = [len(e) for e in examples]
    planner = EpochPlanner(lengths, batch_size=4, seed=1, packing=True, max_seq_length=256)
    sequences = [s for b in planner.epoch(0) for s in b]
    assert sorted(i for s in sequences for i in s) == list(range(len(examples)))
    totals = [sum(lengths[i] for i in s) for s in sequences]
    assert max(totals) <= 256
    assert sum(totals) / (len(sequences) * 256) > 0.9  # sequences are nearly full


def test_packing_trains_fewer_steps_for_the_same_epoch(tiny_model_dir: Path, tmp_path: Path) -> None:
    from tests.runtime.builders import make_plan, run_training

    data = write_jsonl(tmp_path / "chat.jsonl", varied_chat_rows(32))
    runs = {}
    for packing in (False, True):
        plan = make_plan(
            model_dir=tiny_model_dir,
            dataset_uri=data.as_uri(),
            output_uri=(tmp_path / f"out-{packing}").as_uri(),
            work_dir=tmp_path / f"w-{packing}",
            training={"epochs": 1, "maxSteps": None, "packing": packing, "maxSeqLength": 512, "batchSize": 4},
            validation_split=0.0,
        )
        runs[packing] = run_training(plan)
        assert runs[packing].exit_code == 0, runs[packing].events[-1]
    assert runs[False].steps[-1] == 8  # 32 rows / 4
    assert runs[True].steps[-1] < 8
    completed = {p: r.of("completed")[0]["progress"] for p, r in runs.items()}
    assert completed[True]["epoch"] == completed[False]["epoch"] == 1.0
