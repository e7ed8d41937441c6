"""Many LoRA adapters in one batch, in one pass per layer.

peft's mixed-batch forward (`_mixed_batch_forward`) loops over the adapters present in the batch: per layer
and per adapter it gathers that adapter's rows and runs two small matmuls. With tens of adapters that is
thousands of small operations per step, and the Python around them costs more than the model itself.

Here each LoRA Linear layer keeps its plain-LoRA adapters stacked (A as [slots, r, in], B as [slots, out, r],
ranks padded with zeros, scaling folded into B, slot 0 all zeros for rows without an adapter). A step
gathers every row's A and B by slot and runs two batched matmuls (`bmm`) for the whole batch. Adapters this
path does not cover (DoRA and other variants, LoRA with a bias) keep peft's per-adapter code, on their rows
only. The stacks are rebuilt lazily when the registry's adapter set changes (`AdapterSetVersion`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import torch

_INSTALLED = "_peft_operator_grouped_lora"


@dataclass
class AdapterSetVersion:
    """Bumped by the registry on every attach and detach; stacks older than it are rebuilt."""

    value: int = 0

    def bump(self) -> None:
        self.value += 1


@dataclass
class _Stack:
    version: int
    slots: dict[str, int] = field(default_factory=dict)  # adapter name -> slot (0: no adapter)
    a: torch.Tensor | None = None  # [slots, r, in]
    b: torch.Tensor | None = None  # [slots, out, r], scaling folded in


def install(model: Any, version: AdapterSetVersion) -> None:
    """Give every LoRA Linear layer of `model` the grouped mixed-batch forward (idempotent)."""
    from peft.tuners.lora.layer import Linear

    for module in model.modules():
        if type(module) is Linear and not hasattr(module, _INSTALLED):
            setattr(module, _INSTALLED, _Stack(version=-1))
            module._mixed_batch_forward = functools.partial(_grouped_forward, module, version)


def _stack(layer: Any, version: AdapterSetVersion) -> _Stack:
    stack: _Stack = getattr(layer, _INSTALLED)
    if stack.version == version.value:
        return stack
    names = [n for n in layer.lora_A if n not in layer.lora_variant and not layer.lora_bias.get(n, False)]
    stack = _Stack(version=version.value)
    if names:
        weight = layer.lora_A[names[0]].weight
        rank = max(int(layer.r[n]) for n in names)
        a = torch.zeros(len(names) + 1, rank, layer.in_features, dtype=weight.dtype, device=weight.device)
        b = torch.zeros(len(names) + 1, layer.out_features, rank, dtype=weight.dtype, device=weight.device)
        with torch.no_grad():
            for slot, name in enumerate(names, start=1):
                r = int(layer.r[name])
                a[slot, :r] = layer.lora_A[name].weight
                b[slot, :, :r] = layer.lora_B[name].weight * layer.scaling[name]
        stack.slots = {name: slot for slot, name in enumerate(names, start=1)}
        stack.a, stack.b = a, b
    setattr(layer, _INSTALLED, stack)
    return stack


def _grouped_forward(
    layer: Any, version: AdapterSetVersion, x: torch.Tensor, *args: Any, adapter_names: list[str], **kwargs: Any
) -> torch.Tensor:
    from peft.tuners.lora.layer import VARIANT_KWARG_KEYS

    variant_kwargs = {k: kwargs.pop(k, None) for k in VARIANT_KWARG_KEYS}
    result: torch.Tensor = layer.base_layer(x, *args, **kwargs)
    stack = _stack(layer, version)
    slots = [stack.slots.get(name, 0) for name in adapter_names]
    if stack.a is not None and stack.b is not None and any(slots):
        index = torch.tensor(slots, device=stack.a.device)
        rows = x.to(stack.a.dtype).reshape(len(slots), -1, x.shape[-1])  # [batch, tokens, in]
        down = torch.bmm(rows, stack.a.index_select(0, index).transpose(1, 2))  # [batch, tokens, r]
        up = torch.bmm(down, stack.b.index_select(0, index).transpose(1, 2))  # [batch, tokens, out]
        result = result + up.reshape(result.shape).to(result.dtype)
    # What the stack does not cover (DoRA and other variants, LoRA with a bias): peft's own code, per adapter.
    for name in {n for n in adapter_names if n in layer.lora_A and n not in stack.slots}:
        picked = [i for i, n in enumerate(adapter_names) if n == name]
        sub = x[picked].to(layer.lora_A[name].weight.dtype)
        if name in layer.lora_variant:
            out = layer.lora_variant[name].forward(
                layer, active_adapter=name, x=sub, result=result[picked], **variant_kwargs, **kwargs
            )
            result[picked] = out.to(result.dtype)
        else:
            delta = layer.lora_B[name](layer.lora_A[name](layer.lora_dropout[name](sub))) * layer.scaling[name]
            result[picked] += delta.to(result.dtype)
    return result
