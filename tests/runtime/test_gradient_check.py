"""Unit (pure logic on a small torch module, no model): the trainer's gradient check stops a run whose
trainable tensors get no gradient, and lets zero-initialised adapters through their first step."""

from __future__ import annotations

import pytest
import torch

from peft_runtime.train.errors import TrainerError
from peft_runtime.train.gradients import GradientCheck


class TwoLayers(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.down = torch.nn.Linear(4, 2, bias=False)
        self.up = torch.nn.Linear(2, 4, bias=False)
        self.unused = torch.nn.Linear(4, 4, bias=False)
        torch.nn.init.zeros_(self.up.weight)  # like LoRA's B: `down` gets no gradient at the first step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


def _step(model: TwoLayers, check: GradientCheck, step: int) -> None:
    model.zero_grad()
    model(torch.ones(3, 4)).sum().backward()
    check.observe(step)
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad


def test_a_zero_initialised_adapter_passes_once_its_partner_has_moved() -> None:
    model = TwoLayers()
    model.unused.weight.requires_grad_(False)
    check = GradientCheck(model)
    _step(model, check, 1)
    _step(model, check, 2)
    assert check.never_moved == set()


def test_a_trainable_tensor_the_forward_never_reaches_stops_the_run_with_its_name() -> None:
    model = TwoLayers()
    check = GradientCheck(model)
    _step(model, check, 1)
    with pytest.raises(TrainerError) as raised:
        _step(model, check, 2)
    assert "1 of 3 trainable tensors received no gradient" in raised.value.message
    assert "unused" in raised.value.message


def test_a_non_finite_gradient_stops_the_run() -> None:
    model = TwoLayers()
    model.unused.weight.requires_grad_(False)
    check = GradientCheck(model)
    model(torch.ones(1, 4)).sum().backward()
    model.down.weight.grad = torch.full_like(model.down.weight, float("nan"))
    with pytest.raises(TrainerError, match="not finite at step 1"):
        check.observe(1)
