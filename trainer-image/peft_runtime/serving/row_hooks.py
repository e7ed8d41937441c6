"""Per-row adapters as forward hooks on base-model modules (IA3 scaling vectors, bottleneck adapters).

A `RowHooks` puts one hook on each module some adapter needs, once, and keeps, per module, a table
{internal adapter name: that adapter's weights for the module}, plus what `prepare` makes of the table
(e.g. the weights stacked, so a step gathers every row's in one operation). During a forward pass the hook
reads the rows' adapter names (`RowAdapters`, set by the registry for the whole pass) and applies each
adapter to its own rows only, so these adapters share batches with LoRA rows, base rows and each other.

Tables are replaced, never changed in place, so a forward pass in progress keeps reading the table it
started with. Registering a hook changes the module's hook dict, which a concurrent forward pass iterates:
`add` is called under the model lock when `needs_hooks` says a module has none yet.

Hooks sit on the modules as loaded (a LoRA layer that wraps one later calls it as its `base_layer`, so the
hook still runs), which is why callers pass modules, not names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .lora_batching import RowAdapters

# apply(the module's prepared table, the rows' names, tensor) -> tensor
Apply = Callable[[Any, list[str], torch.Tensor], torch.Tensor]


class RowHooks:
    def __init__(
        self, rows: RowAdapters, apply: Apply, *, on_input: bool, prepare: Callable[[dict[str, Any]], Any] = dict
    ) -> None:
        self._rows = rows
        self._apply = apply
        self._prepare = prepare  # table -> what `apply` reads, built when the table changes, not per step
        self._on_input = on_input  # a pre-hook on the module's first argument, else a hook on its output
        self._tables: dict[nn.Module, dict[str, Any]] = {}
        self._prepared: dict[nn.Module, Any] = {}

    def needs_hooks(self, modules: list[nn.Module]) -> bool:
        return any(module not in self._tables for module in modules)

    def add(self, internal: str, weights: dict[nn.Module, Any]) -> None:
        for module in weights:
            if module not in self._tables:
                self._tables[module] = {}
                self._register(module)
        for module, value in weights.items():
            self._set(module, {**self._tables[module], internal: value})

    def remove(self, internal: str) -> None:
        for module, table in list(self._tables.items()):
            if internal in table:
                self._set(module, {name: value for name, value in table.items() if name != internal})

    def _set(self, module: nn.Module, table: dict[str, Any]) -> None:
        # prepared first: a hook that sees the new table must find what was prepared from it
        self._prepared[module] = self._prepare(table)
        self._tables[module] = table

    def _present(self, module: nn.Module) -> tuple[Any, list[str]] | None:
        names = self._rows.names
        table = self._tables.get(module)
        if names is None or not table or table.keys().isdisjoint(names):
            return None
        return self._prepared[module], names

    def _register(self, module: nn.Module) -> None:
        if self._on_input:

            def before(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
                present = self._present(module)
                if present is None:
                    return None
                return (self._apply(*present, args[0]), *args[1:])

            module.register_forward_pre_hook(before)
        else:

            def after(module: nn.Module, _args: Any, output: Any) -> Any:
                present = self._present(module)
                if present is None:
                    return None
                if isinstance(output, tuple):  # attention blocks return (hidden states, attention weights)
                    return (self._apply(*present, output[0]), *output[1:])
                return self._apply(*present, output)

            module.register_forward_hook(after)


def row_indices(names: list[str], name: str, device: torch.device) -> torch.Tensor:
    """Indices of the rows using adapter `name`."""
    return torch.tensor([i for i, n in enumerate(names) if n == name], device=device)
