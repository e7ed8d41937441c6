"""Unit (pure logic, no model, milliseconds): the trainer's parts that full training runs exercise only
slowly: the epoch planner, the LR schedule, progress arithmetic and what a terminal shows."""

from __future__ import annotations

import pytest

from peft_operator.api.finetunejob import DatasetReport, LrScheduler
from peft_runtime.train.batches import EpochPlanner
from peft_runtime.train.checkpoints import TrainState
from peft_runtime.train.progress import format_duration, preflight_summary
from peft_runtime.train.trainer import SessionClock, learning_rate_factor

LENGTHS = [5 + (i * 37) % 90 for i in range(203)]


@pytest.mark.parametrize("packing", [False, True])
def test_every_row_is_trained_exactly_once_per_epoch(packing: bool) -> None:
    planner = EpochPlanner(LENGTHS, batch_size=8, seed=3, packing=packing, max_seq_length=128)
    for epoch in range(3):
        rows = [row for micro_batch in planner.epoch(epoch) for sequence in micro_batch for row in sequence]
        assert sorted(rows) == list(range(len(LENGTHS)))


def test_an_epoch_s_order_is_a_function_of_seed_and_epoch_only() -> None:
    planner = EpochPlanner(LENGTHS, batch_size=8, seed=3, packing=False, max_seq_length=128)
    again = EpochPlanner(LENGTHS, batch_size=8, seed=3, packing=False, max_seq_length=128)
    assert planner.epoch(1) == again.epoch(1)  # what a resumed run relies on
    assert planner.epoch(1) != planner.epoch(2)
    assert planner.epoch(1) != EpochPlanner(LENGTHS, 8, 4, False, 128).epoch(1)


def test_packed_sequences_never_exceed_max_seq_length() -> None:
    planner = EpochPlanner(LENGTHS, batch_size=4, seed=0, packing=True, max_seq_length=128)
    for micro_batch in planner.epoch(0):
        for sequence in micro_batch:
            assert sum(LENGTHS[i] for i in sequence) <= 128


def test_lr_warms_up_linearly_then_decays_to_zero_on_the_last_step() -> None:
    cosine = learning_rate_factor(LrScheduler.COSINE, warmup=4, total=104)
    assert [cosine(s) for s in range(4)] == [0.2, 0.4, 0.6, 0.8]
    assert cosine(4) == 1.0 and cosine(54) == pytest.approx(0.5) and cosine(104) == pytest.approx(0.0)
    linear = learning_rate_factor(LrScheduler.LINEAR, warmup=0, total=10)
    assert [round(linear(s), 2) for s in (0, 5, 10, 20)] == [1.0, 0.5, 0.0, 0.0]
    assert learning_rate_factor(LrScheduler.CONSTANT, warmup=0, total=10)(9) == 1.0


def test_progress_reports_percent_epoch_recent_loss_and_throughput() -> None:
    state = TrainState(fingerprint="f", step=30, epoch=1, next_batch=5, recent_losses=[2.0, 1.0])
    clock = SessionClock(tokens=6000, steps=10, step_seconds=3.0)
    progress = clock.progress(state, total_steps=120, batches_in_epoch=20, eval_rows=6)
    assert (progress.percent, progress.epoch, progress.loss) == (25, 1.25, 1.5)
    assert progress.eval_rows is None, "no eval loss yet, so no rows it was measured on"
    state.eval_loss = 0.5
    assert clock.progress(state, total_steps=120, batches_in_epoch=20, eval_rows=6).eval_rows == 6
    assert progress.tokens_per_second == 2000.0
    assert progress.eta is not None


def test_durations_read_like_kubectl_s() -> None:
    assert [format_duration(s) for s in (0, 45, 750, 3720)] == ["0s", "45s", "12m30s", "1h2m"]


def test_the_terminal_summary_counts_grammatically_and_lists_each_warning() -> None:
    report = DatasetReport(rows=1, usable_rows=1, tokens=12, duplicates=0, warnings=["only 1 usable example: ..."])
    assert preflight_summary(report) == [
        "Dataset: 1 row, 1 usable, 12 tokens, 0 duplicates, 0% truncated",
        "  warning: only 1 usable example: ...",
    ]
