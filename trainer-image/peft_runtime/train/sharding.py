"""training.strategy fsdp: the frozen base model's transformer blocks sharded across the ranks (FSDP2), for a
base model that does not fit one device.

PEFT trains a few million adapter parameters on a base of billions, so what must be split is the base.
Each transformer block (the model's `_no_split_modules` class) is one FSDP2 unit: a rank keeps 1/world of
its weights and all-gathers the rest for the block's forward and backward. The adapter's parameters are
left out of the sharding (`ignored_params`): every rank keeps them whole and the trainer sums their
gradients as in ddp, so checkpoints, evaluation and the adapter file are the same as in ddp. qlora's 4-bit
weights are sharded too: they are stored in the training dtype (bnb_4bit_quant_storage), as the FSDP+QLoRA
recipe does, and bitsandbytes keeps each layer's quantization state on the module. The embeddings and the
output layer stay whole on every rank (the answer-only loss calls the output layer outside the model's
forward).

Every forward and backward of a sharded block is a collective, so under fsdp every rank runs the same
number of them: a rank with fewer micro-batches in a step (at an epoch's end) runs a zero-weighted one, and
every rank evaluates.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from peft_operator.api.finetunejob import Strategy

from .distributed import Ranks
from .errors import configuration_error

AUTO_FSDP_SHARE = 0.5  # auto shards when the base's weights take more than this share of one GPU's memory
QUANTIZED_SHARE = 0.25  # 4-bit weights are about a quarter of 16-bit ones


def base_weight_bytes(model_dir: Path, quantized: bool) -> int:
    """The base model's weights in memory, estimated from its safetensors files."""
    stored = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
    return int(stored * QUANTIZED_SHARE) if quantized else stored


def choose_strategy(
    requested: Strategy, processes: int, weight_bytes: int, device_bytes: int | None
) -> Strategy | None:
    """The strategy a run uses: None for one process; auto is fsdp only on GPUs (`device_bytes`, the memory of
    one) the base's weights would fill past AUTO_FSDP_SHARE (on CPU the processes share the host's memory)."""
    if processes == 1:
        return None
    if requested is not Strategy.AUTO:
        return requested
    if device_bytes is not None and weight_bytes > AUTO_FSDP_SHARE * device_bytes:
        return Strategy.FSDP
    return Strategy.DDP


def device_memory(device: torch.device) -> int | None:
    return int(torch.cuda.get_device_properties(device).total_memory) if device.type == "cuda" else None


@dataclass(frozen=True)
class Shards:
    blocks: int  # FSDP units
    held_bytes: int  # of the model's parameters (base and adapter), on this rank
    whole_bytes: int  # the same, unsharded

    def summary(self, ranks: Ranks) -> str:
        return (
            f"fsdp: {self.blocks} transformer blocks sharded over {ranks.world} processes; rank {ranks.rank} holds "
            f"{self.held_bytes:,} of the model's {self.whole_bytes:,} parameter bytes"
        )


def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules fsdp shards one by one: those of the classes the transformers model names as never to be
    split (`_no_split_modules`: its decoder layers). The preflight checks them too, on the meta model."""
    block_names = {name for m in model.modules() for name in (getattr(m, "_no_split_modules", None) or ())}
    blocks = [m for m in model.modules() if type(m).__name__ in block_names]
    if not blocks:
        raise configuration_error(
            f"strategy fsdp shards a model's transformer blocks, and {type(model).__name__} names none "
            "(transformers' _no_split_modules); use training.strategy ddp"
        )
    return blocks


def shard_transformer_blocks(model: Any, ranks: Ranks, device: torch.device) -> Shards:
    """FSDP2 on each transformer block of `model` (base + adapter), the adapter left whole; then everything
    else onto `device` (a GPU run loads the base into host memory first, so no device holds it whole)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    blocks = transformer_blocks(model)
    whole = _bytes(model.parameters())
    mesh = init_device_mesh(device.type, (ranks.world,))
    adapter = {p for p in model.parameters() if p.requires_grad}
    for block in blocks:
        fully_shard(block, mesh=mesh, ignored_params=adapter)
    _move_unsharded(model, device)
    return Shards(len(blocks), _bytes(_local(p) for p in model.parameters()), whole)


def _local(parameter: torch.Tensor) -> torch.Tensor:
    return parameter.to_local() if hasattr(parameter, "to_local") else parameter


def _bytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _move_unsharded(model: torch.nn.Module, device: torch.device) -> None:
    """What FSDP left where it was loaded (the adapter, the embeddings, the output layer, buffers) onto
    `device`, in place: the Parameter objects stay the ones the optimizer will hold."""
    with torch.no_grad():
        for module in model.modules():
            for parameter in module.parameters(recurse=False):
                if not hasattr(parameter, "to_local") and parameter.device != device:
                    parameter.data = parameter.data.to(device)
            for name, buffer in module.named_buffers(recurse=False):
                if buffer is not None and buffer.device != device:
                    persistent = name not in module._non_persistent_buffers_set
                    module.register_buffer(name, buffer.to(device), persistent=persistent)
