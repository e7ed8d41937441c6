"""Bottleneck adapters (`method: adapter`, peft_runtime/bottleneck.py) on the built-in engine.

Each adapter adds `h + up(act(down(h)))` after the attention and/or MLP block of every decoder layer, as in
training; here the small modules run on their own rows only (`row_hooks.py`), so bottleneck rows share a
forward pass with rows of any other adapter. Rows of one adapter are gathered and computed together: the
cost is two small matmuls per block per adapter present in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..bottleneck import Bottleneck, BottleneckConfig, adapter_blocks, bottleneck_size, module_key
from ..common.errors import AdapterCorrupt, IncompatibleBaseModel
from .lora_batching import RowAdapters
from .row_hooks import RowHooks, row_indices


@dataclass(frozen=True)
class BottleneckAdapter:
    """One bottleneck adapter, read and checked: its config and a module per "<layer>_<placement>" key."""

    config: BottleneckConfig
    modules: dict[str, Bottleneck]


def read_bottleneck(
    name: str,
    raw_config: dict[str, Any],
    weights: dict[str, torch.Tensor],
    *,
    hidden_size: int | None,
    num_layers: int | None,
    dtype: torch.dtype,
    device: str,
) -> BottleneckAdapter:
    """The adapter's modules, built from its config and weights; shapes must fit this model's hidden size."""
    known = set(BottleneckConfig.__dataclass_fields__)
    try:
        config = BottleneckConfig(**{k: v for k, v in raw_config.items() if k in known})
    except TypeError as error:
        raise AdapterCorrupt(f"adapter '{name}' has an invalid bottleneck config: {error}") from error
    if hidden_size is not None and config.hidden_size not in (None, hidden_size):
        raise IncompatibleBaseModel(
            f"adapter '{name}' was trained on a model of hidden size {config.hidden_size}; this one's is {hidden_size}"
        )
    if num_layers is not None and config.num_layers not in (None, num_layers):
        raise IncompatibleBaseModel(
            f"adapter '{name}' was trained on a model of {config.num_layers} layers; this one has {num_layers}"
        )
    config.hidden_size = hidden_size
    by_module: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in weights.items():
        block, _, part = module_key(key).partition(".")
        by_module.setdefault(block, {})[part] = tensor
    modules = {}
    for block, state in by_module.items():
        module = Bottleneck(int(hidden_size or 0), bottleneck_size(config), config.non_linearity)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as error:  # missing parts or other shapes
            raise IncompatibleBaseModel(f"adapter '{name}' has weights that do not fit this model: {error}") from error
        modules[block] = module.to(device=device, dtype=dtype).eval()
    if not modules:
        raise AdapterCorrupt(f"adapter '{name}' holds no bottleneck weights")
    return BottleneckAdapter(config, modules)


def _apply(adapters: dict[str, Bottleneck], names: list[str], hidden: torch.Tensor) -> torch.Tensor:
    hidden = hidden.clone()  # the block's output may be a view other code still reads
    for name in set(names).intersection(adapters):
        picked = row_indices(names, name, hidden.device)
        hidden[picked] = adapters[name](hidden[picked])
    return hidden


class BottleneckRows:
    """The bottleneck adapters loaded into one model."""

    def __init__(self, model: nn.Module, rows: RowAdapters) -> None:
        self._model = model
        self._hooks = RowHooks(rows, _apply, on_input=False)

    def check(self, name: str, adapter: BottleneckAdapter) -> None:
        """Every block the adapter follows must exist in this model (same layer count, same block kinds)."""
        blocks = self._blocks(adapter)
        missing = sorted(set(adapter.modules) - set(blocks))
        if missing:
            raise IncompatibleBaseModel(
                f"adapter '{name}' follows blocks this model lacks ({', '.join(missing[:3])}): "
                "it was trained on a different base model"
            )

    def needs_hooks(self, adapter: BottleneckAdapter) -> bool:
        return self._hooks.needs_hooks(list(self._blocks(adapter).values()))

    def add(self, internal: str, adapter: BottleneckAdapter) -> None:
        blocks = self._blocks(adapter)
        self._hooks.add(internal, {blocks[key]: module for key, module in adapter.modules.items()})

    def remove(self, internal: str) -> None:
        self._hooks.remove(internal)

    def _blocks(self, adapter: BottleneckAdapter) -> dict[str, nn.Module]:
        try:
            return adapter_blocks(self._model, adapter.config.placement)
        except ValueError as error:
            raise IncompatibleBaseModel(str(error)) from error
