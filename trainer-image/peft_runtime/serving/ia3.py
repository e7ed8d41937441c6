"""IA3 on the built-in engine: each adapter is a set of learned vectors that rescale some Linear layers'
inputs (feed-forward modules) or outputs (the others), exactly as peft's IA3 layers do. Applied per row
(`row_hooks.py`), so IA3 rows share a forward pass with rows of any other adapter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..common.errors import AdapterCorrupt, IncompatibleBaseModel
from .lora_batching import RowAdapters
from .row_hooks import RowHooks

_PEFT_PREFIX = "base_model.model."
_SUFFIX = ".ia3_l"


@dataclass(frozen=True)
class Ia3Vectors:
    """One IA3 adapter, read and checked: module path -> scaling vector."""

    inputs: dict[str, torch.Tensor]  # feed-forward modules: x * l before the layer
    outputs: dict[str, torch.Tensor]  # the others: layer(x) * l


def read_ia3(
    name: str, config: dict[str, Any], weights: dict[str, torch.Tensor], shapes: dict[str, tuple[int, int]]
) -> Ia3Vectors:
    """The adapter's vectors, each checked against the base model's module (its (in, out) from `shapes`)."""
    feedforward = config.get("feedforward_modules") or []
    vectors = Ia3Vectors({}, {})
    for key, tensor in weights.items():
        if not key.endswith(_SUFFIX):
            raise AdapterCorrupt(f"adapter '{name}' has weight {key}, which is not an IA3 vector (.ia3_l)")
        module = key.removeprefix(_PEFT_PREFIX).removesuffix(_SUFFIX)
        if module not in shapes:
            raise IncompatibleBaseModel(f"adapter '{name}' scales module {module}, which the base model lacks")
        fan_in, fan_out = shapes[module]
        on_input = _is_feedforward(module, feedforward)
        size = fan_in if on_input else fan_out
        if tensor.numel() != size:
            raise IncompatibleBaseModel(
                f"adapter '{name}' has {module}.ia3_l of shape {list(tensor.shape)}; {module} needs {size} values: "
                "it was trained on a different base model"
            )
        (vectors.inputs if on_input else vectors.outputs)[module] = tensor.flatten()
    if not weights:
        raise AdapterCorrupt(f"adapter '{name}' holds no IA3 vectors")
    return vectors


def _is_feedforward(module: str, feedforward: str | list[str]) -> bool:
    """peft's rule (IA3Model._create_and_replace): a regex must match the whole path, a list entry its end."""
    if isinstance(feedforward, str):
        return re.fullmatch(feedforward, module) is not None
    return any(module.endswith(entry) for entry in feedforward)


@dataclass(frozen=True)
class _Stack:
    slots: dict[str, int]  # adapter -> row of `scales` (0: all ones, for rows of other adapters)
    scales: torch.Tensor  # [adapters + 1, features]


def _stack(vectors: dict[str, torch.Tensor]) -> _Stack:
    if not vectors:  # never read: a hook whose table is empty does nothing
        return _Stack({}, torch.ones(1, 1))
    names = sorted(vectors)
    first = vectors[names[0]]
    scales = torch.cat([first.new_ones(1, first.numel()), *(vectors[n][None] for n in names)])
    return _Stack({name: slot for slot, name in enumerate(names, start=1)}, scales)


def _scale(stack: _Stack, names: list[str], x: torch.Tensor) -> torch.Tensor:
    index = torch.tensor([stack.slots.get(n, 0) for n in names], device=stack.scales.device)
    scales = stack.scales.index_select(0, index).to(x.dtype)  # [rows, features]
    return x * scales.view(len(names), *([1] * (x.dim() - 2)), x.shape[-1])


class Ia3Rows:
    """The IA3 adapters loaded into one model."""

    def __init__(self, model: nn.Module, rows: RowAdapters) -> None:
        self._model = model
        self._inputs = RowHooks(rows, _scale, on_input=True, prepare=_stack)
        self._outputs = RowHooks(rows, _scale, on_input=False, prepare=_stack)

    def needs_hooks(self, vectors: Ia3Vectors) -> bool:
        return self._inputs.needs_hooks(self._modules(vectors.inputs)) or self._outputs.needs_hooks(
            self._modules(vectors.outputs)
        )

    def add(self, internal: str, vectors: Ia3Vectors) -> None:
        self._inputs.add(internal, dict(zip(self._modules(vectors.inputs), vectors.inputs.values(), strict=True)))
        self._outputs.add(internal, dict(zip(self._modules(vectors.outputs), vectors.outputs.values(), strict=True)))

    def remove(self, internal: str) -> None:
        self._inputs.remove(internal)
        self._outputs.remove(internal)

    def _modules(self, paths: dict[str, torch.Tensor]) -> list[nn.Module]:
        """The base model's own Linear at each path (under a LoRA wrapper, once one wraps it)."""
        modules = []
        for path in paths:
            module = self._model.get_submodule(path)
            modules.append(getattr(module, "base_layer", module))
        return modules
