"""Many LoRA adapters in one batch, in one pass per layer.

Two costs of peft's mixed-batch inference (`model(..., adapter_names=[...])`) grow with the number of adapters:
- per forward, peft walks every module twice to validate the names and to register, then remove, a hook on
  each adapter layer: with 50 adapters a 30-layer model has ~20,000 modules, tens of milliseconds per step;
- per layer, `_mixed_batch_forward` loops over the adapters in the batch, gathering each one's rows and
  running two small matmuls: thousands of small operations per step.

Here the registry sets the rows' adapter names once per forward (`RowAdapters`), and each adapter layer
reads them there (its `forward` is replaced on the instance by `install`). Each LoRA Linear layer keeps its
plain-LoRA adapters stacked (A as [slots, r, in], B as [slots, out, r], ranks padded with zeros, scaling
folded into B, slot 0 all zeros for rows without an adapter): a step gathers every row's A and B by slot and
runs two batched matmuls for the whole batch. What the stack does not cover (DoRA and other variants, LoRA
with a bias, LoRA on Embedding/Conv layers, modules_to_save) runs peft's own per-adapter code on its rows.
The registry rebuilds the stacks (`refresh`) on its own thread when its adapter set changes, and swaps them
in layer by layer: a forward pass never waits for a rebuild.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import torch

BASE_ROW = "__base__"  # peft's name for "no adapter" in a mixed batch
_INSTALLED = "_peft_operator_rows"


@dataclass
class RowAdapters:
    """The peft adapter name of every row of the forward pass in progress; None outside one."""

    names: list[str] | None = None


@dataclass(frozen=True)
class _Stack:
    slots: dict[str, int] = field(default_factory=dict)  # adapter name -> slot (0: no adapter)
    others: frozenset[str] = frozenset()  # adapters on this layer that peft's code computes
    a: torch.Tensor | None = None  # [slots, r, in]
    b: torch.Tensor | None = None  # [slots, out, r], scaling folded in


def install(model: Any, rows: RowAdapters) -> None:
    """Route `rows` into every adapter layer of `model` (idempotent: new layers only). Call `refresh` next."""
    from peft.tuners.lora.layer import Linear, LoraLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    for module in model.modules():
        if hasattr(module, _INSTALLED):
            continue
        if type(module) is Linear:
            _route(module, _linear_forward, rows, _Stack())
        elif isinstance(module, LoraLayer):
            _route(module, _lora_forward, rows, True)
        elif isinstance(module, AuxiliaryTrainingWrapper):
            _route(module, _wrapper_forward, rows, True)


def _route(module: Any, forward: Any, rows: RowAdapters, state: object) -> None:
    """Replace `forward` on this instance only (nn.Module calls `self.forward`); the class stays peft's."""
    setattr(module, _INSTALLED, state)
    module.forward = functools.partial(forward, module, rows)


def _lora_forward(layer: Any, rows: RowAdapters, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """Other LoRA layer types: peft's forward, given the rows' names as peft's own hook would."""
    if rows.names is not None:
        kwargs["adapter_names"] = rows.names
    return type(layer).forward(layer, x, *args, **kwargs)


def _wrapper_forward(wrapper: Any, rows: RowAdapters, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """modules_to_save and trainable tokens: rows of adapters without a copy of this module use the original."""
    if rows.names is None:
        return type(wrapper).forward(wrapper, x, *args, **kwargs)
    names = [n if n in wrapper._adapters else BASE_ROW for n in rows.names]
    if all(n == BASE_ROW for n in names):
        return wrapper._forward_wrapped_passthrough(x, *args, **kwargs)
    return wrapper._mixed_batch_forward(x, *args, adapter_names=names, **kwargs)


def refresh(model: Any, adapters: frozenset[str]) -> None:
    """Rebuild every LoRA Linear layer's stack for `adapters` (the internal names rows may use)."""
    for module in model.modules():
        if isinstance(getattr(module, _INSTALLED, None), _Stack):
            setattr(module, _INSTALLED, _build(module, adapters))


def _linear_forward(layer: Any, rows: RowAdapters, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    if rows.names is None:
        return type(layer).forward(layer, x, *args, **kwargs)  # type: ignore[no-any-return]
    names = rows.names
    result: torch.Tensor = layer.base_layer(x, *args, **kwargs)
    stack: _Stack = getattr(layer, _INSTALLED)
    slots = [stack.slots.get(name, 0) for name in names]
    if stack.a is not None and stack.b is not None and any(slots):
        index = torch.tensor(slots, device=stack.a.device)
        batch = x.to(stack.a.dtype).reshape(len(slots), -1, x.shape[-1])  # [rows, tokens, in]
        down = torch.bmm(batch, stack.a.index_select(0, index).transpose(1, 2))  # [rows, tokens, r]
        up = torch.bmm(down, stack.b.index_select(0, index).transpose(1, 2))  # [rows, tokens, out]
        result = result + up.reshape(result.shape).to(result.dtype)
    # What the stack does not cover (DoRA and other variants, LoRA with a bias): peft's own code, per adapter.
    for name in stack.others.intersection(names):
        picked = [i for i, n in enumerate(names) if n == name]
        sub = x[picked].to(layer.lora_A[name].weight.dtype)
        if name in layer.lora_variant:
            out = layer.lora_variant[name].forward(layer, active_adapter=name, x=sub, result=result[picked])
            result[picked] = out.to(result.dtype)
        else:
            delta = layer.lora_B[name](layer.lora_A[name](layer.lora_dropout[name](sub))) * layer.scaling[name]
            result[picked] += delta.to(result.dtype)
    return result


def _build(layer: Any, adapters: frozenset[str]) -> _Stack:
    """The layer's stack for `adapters`. Reads only those adapters' modules (a load may be adding another)."""
    present = sorted(n for n in adapters if n in layer.lora_A)
    names = [n for n in present if n not in layer.lora_variant and not layer.lora_bias.get(n, False)]
    others = frozenset(present) - set(names)
    if not names:
        return _Stack(others=others)
    weight = layer.lora_A[names[0]].weight
    rank = max(int(layer.r[n]) for n in names)
    a = torch.zeros(len(names) + 1, rank, layer.in_features, dtype=weight.dtype, device=weight.device)
    b = torch.zeros(len(names) + 1, layer.out_features, rank, dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        for slot, name in enumerate(names, start=1):
            r = int(layer.r[name])
            a[slot, :r] = layer.lora_A[name].weight
            b[slot, :, :r] = layer.lora_B[name].weight * layer.scaling[name]
    return _Stack(slots={name: slot for slot, name in enumerate(names, start=1)}, others=others, a=a, b=b)


def rewrite_slot(layer: Any, name: str) -> None:
    """Copy adapter `name`'s weights, changed in place, into its rows of the layer's stack (in place too: rows
    of other adapters read other slots, so a forward pass in progress is not disturbed)."""
    stack = getattr(layer, _INSTALLED, None)
    if not isinstance(stack, _Stack) or name not in stack.slots or stack.a is None or stack.b is None:
        return  # peft's own code computes this adapter on this layer: it reads the module's weights
    slot, r = stack.slots[name], int(layer.r[name])
    with torch.no_grad():
        stack.a[slot, :r] = layer.lora_A[name].weight
        stack.b[slot, :, :r] = layer.lora_B[name].weight * layer.scaling[name]
