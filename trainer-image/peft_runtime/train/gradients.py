"""A run that 'succeeds' without learning is the worst failure: stop it at its second step instead.

Some trainable tensors get a zero gradient at the first step by design (LoRA's A while B is still zero, a
bottleneck adapter's down-projection while its up-projection is zero), so the check waits until the step
after the first optimizer step: by then every trainable tensor must have had a finite, non-zero gradient.
Seen for real: bitsandbytes' CPU inference path for 4-bit weights has no autograd kernel, and QLoRA trained
nothing but its last layers while the loss went up (see methods.keep_4bit_layers_differentiable).
"""

from __future__ import annotations

from typing import Any

import torch

from .errors import training_error

STEPS_WATCHED = 2  # the first optimizer step, and the one after it
NAMES_SHOWN = 6


class GradientCheck:
    """Call `observe(step)` after each step's backward pass (gradients unscaled), before the optimizer step."""

    def __init__(self, model: Any, check_finite: bool = True):
        self.trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.never_moved = {name for name, _ in self.trainable}
        self.check_finite = check_finite  # an fp16 GradScaler skips non-finite steps by design
        self.steps_seen = 0

    def observe(self, step: int) -> None:
        if self.steps_seen >= STEPS_WATCHED:
            return
        self.steps_seen += 1
        for name, parameter in self.trainable:
            gradient = parameter.grad
            if gradient is None:
                continue
            if self.check_finite and not bool(torch.isfinite(gradient).all()):
                raise training_error(
                    f"the gradient of {_module_of(name)} is not finite at step {step}; lower learningRate or "
                    "use precision fp32/bf16"
                )
            if name in self.never_moved and bool(gradient.ne(0).any()):
                self.never_moved.discard(name)
        if self.steps_seen == STEPS_WATCHED and self.never_moved:
            modules = sorted({_module_of(name) for name in self.never_moved})
            shown = ", ".join(modules[:NAMES_SHOWN]) + (
                f" and {len(modules) - NAMES_SHOWN} more" if len(modules) > NAMES_SHOWN else ""
            )
            raise training_error(
                f"{len(self.never_moved)} of {len(self.trainable)} trainable tensors received no gradient in the "
                f"first {STEPS_WATCHED} steps, so the adapter would not learn there: {shown}. The model's forward "
                "pass does not reach them (a kernel without autograd support, or target modules the forward "
                "never uses); report it with the trainer log"
            )


def _module_of(parameter_name: str) -> str:
    """`...layers.0.self_attn.q_proj.lora_A.default.weight` -> `layers.0.self_attn.q_proj.lora_A`."""
    parts = [p for p in parameter_name.split(".") if p not in ("weight", "bias", "default", "base_model", "model")]
    return ".".join(parts) or parameter_name
