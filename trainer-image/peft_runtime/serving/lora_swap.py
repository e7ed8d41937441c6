"""Cold loads that take over an evicted LoRA adapter's place in the model instead of peft's add and delete.

peft's `add_adapter` walks every module of the model (tens of thousands once many adapters are loaded), and
`delete_adapter` again: most of what a cold load costs. When the adapter coming in has the same shape as the
one going out (plain LoRA on the same layers with the same rank and scaling: tenants trained by one recipe),
its weights are copied into the evicted adapter's tensors and into that adapter's rows of each layer's
stack, and it takes over the evicted adapter's internal name. Nothing is added to or removed from the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .adapters import PreparedAdapter
from .lora_batching import rewrite_slot

_LORA_KEYS = (".lora_A.weight", ".lora_B.weight")


@dataclass(frozen=True)
class LoraShape:
    """What two adapters must share for one to take over the other's tensors."""

    keys: frozenset[str]
    rank: int
    alpha: float
    rslora: bool


def swappable_shape(prepared: PreparedAdapter) -> LoraShape | None:
    """The adapter's shape when it is plain LoRA on Linear layers (no DoRA, bias, per-layer ranks or extra
    modules), else None: such adapters always go through peft's add_adapter."""
    config = prepared.config
    if prepared.own is not None or config is None:
        return None
    extras = (
        config.use_dora,
        config.lora_bias,
        config.modules_to_save,
        config.trainable_token_indices,
        config.rank_pattern,
        config.alpha_pattern,
    )
    if any(extras) or not all(key.endswith(_LORA_KEYS) for key in prepared.weights):
        return None
    return LoraShape(frozenset(prepared.weights), int(config.r), float(config.lora_alpha), bool(config.use_rslora))


def take_over(layers: dict[str, Any], internal: str, weights: dict[str, torch.Tensor]) -> None:
    """Write `weights` (peft's keys) into adapter `internal`'s tensors and stack rows, in place. `layers`:
    the peft model's LoRA layers by module path. No row may be using `internal` (the caller evicted it)."""
    with torch.no_grad():
        for key, tensor in weights.items():
            path, _, leaf = key.rpartition(".lora_")
            modules = layers[path].lora_A if leaf.startswith("A.") else layers[path].lora_B
            modules[internal].weight.copy_(tensor)
    for path in {key.rpartition(".lora_")[0] for key in weights}:
        rewrite_slot(layers[path], internal)
