"""training.strategy, decided before the model loads (pure logic, no processes): what auto picks, and how the
ranks share a step's micro-batches under fsdp, where every rank must run as many forwards as the others."""

from __future__ import annotations

import pytest
import torch

from peft_operator.api.finetunejob import Strategy
from peft_runtime.train.batches import MicroBatch
from peft_runtime.train.distributed import Ranks
from peft_runtime.train.errors import TrainerError
from peft_runtime.train.sharding import choose_strategy, transformer_blocks
from peft_runtime.train.trainer import _rank_share

GIB = 1 << 30


def test_one_process_has_no_strategy_whatever_was_asked() -> None:
    assert choose_strategy(Strategy.FSDP, 1, 100 * GIB, 80 * GIB) is None


@pytest.mark.parametrize(
    ("weights", "device", "expected"),
    [
        (140 * GIB, 80 * GIB, Strategy.FSDP),  # a 70B base in bf16 on 80 GB GPUs
        (41 * GIB, 80 * GIB, Strategy.FSDP),  # past half: the activations and optimizer need the rest
        (16 * GIB, 80 * GIB, Strategy.DDP),  # an 8B base fits each GPU whole
        (140 * GIB, None, Strategy.DDP),  # CPU: the processes share the host's memory
    ],
)
def test_auto_shards_only_a_base_that_would_fill_over_half_a_gpu(
    weights: int, device: int | None, expected: Strategy
) -> None:
    assert choose_strategy(Strategy.AUTO, 8, weights, device) is expected


def test_an_explicit_strategy_is_kept() -> None:
    assert choose_strategy(Strategy.DDP, 2, 140 * GIB, 80 * GIB) is Strategy.DDP
    assert choose_strategy(Strategy.FSDP, 2, 1 * GIB, None) is Strategy.FSDP


def _group(count: int) -> list[MicroBatch]:
    return [[[index]] for index in range(count)]  # micro-batch i holds row i


@pytest.mark.parametrize(
    ("rank", "world", "group", "share", "idle"),
    [
        (0, 2, 4, [0, 2], 0),
        (1, 2, 4, [1, 3], 0),
        (1, 2, 3, [1], 1),  # the epoch's last step: rank 1 runs one zero-weighted micro-batch
        (2, 4, 1, [], 1),  # a rank with no rows left still takes part
        (3, 4, 7, [3], 1),
    ],
)
def test_under_fsdp_every_rank_runs_as_many_micro_batches_as_rank_0(
    rank: int, world: int, group: int, share: list[int], idle: int
) -> None:
    mine, padding = _rank_share(_group(group), Ranks(rank, world), lockstep=True)
    assert [mb[0][0] for mb in mine] == share
    assert len(mine) + len(padding) == len(range(0, group, world))
    assert len(padding) == idle


def test_under_ddp_a_rank_runs_only_its_own_micro_batches() -> None:
    mine, padding = _rank_share(_group(3), Ranks(1, 2), lockstep=False)
    assert [mb[0][0] for mb in mine] == [1] and padding == []


def test_fsdp_refuses_a_model_without_transformer_blocks_and_says_what_to_use() -> None:
    with pytest.raises(TrainerError) as refused:
        transformer_blocks(torch.nn.Sequential(torch.nn.Linear(4, 4)))
    assert refused.value.reason == "ConfigurationError"
    assert str(refused.value) == (
        "strategy fsdp shards a model's transformer blocks, and Sequential names none "
        "(transformers' _no_split_modules); use training.strategy ddp"
    )
