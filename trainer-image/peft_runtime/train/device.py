"""Device and precision, decided once at the start of a run (and refused early when impossible)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from peft_operator.api.finetunejob import Precision

from .distributed import local_rank
from .errors import configuration_error

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype  # the frozen base model's weights
    autocast: torch.dtype | None  # mixed precision for bf16/fp16; None for fp32

    @property
    def needs_grad_scaler(self) -> bool:
        return self.autocast is torch.float16


CPU_THREADS_ENV = "PEFT_CPU_THREADS"


def pick_device() -> torch.device:
    """The GPU of this process (torchrun's LOCAL_RANK in a distributed run), else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device("cuda", local_rank())
    torch.cuda.set_device(device)
    return device


def apply_cpu_threads() -> int:
    """Torch's intra-op threads on CPU: $PEFT_CPU_THREADS if set, else torch's default (every core it
    sees, which in a container can be the whole node's rather than the pod's CPU limit)."""
    value = os.environ.get(CPU_THREADS_ENV, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise configuration_error(f"{CPU_THREADS_ENV}={value!r} is not a positive whole number of threads")
        torch.set_num_threads(int(value))
    return torch.get_num_threads()


def placement(precision: Precision, device: torch.device) -> Placement:
    if precision is Precision.AUTO:
        if device.type == "cuda":
            precision = Precision.BF16 if torch.cuda.is_bf16_supported() else Precision.FP16
        else:
            precision = Precision.FP32
    if precision is Precision.FP16 and device.type != "cuda":
        raise configuration_error("precision fp16 needs a GPU; on CPU use precision auto or fp32")
    if precision is Precision.BF16 and device.type != "cuda":
        log.warning("precision bf16 on CPU is much slower than fp32; consider precision auto")
    dtype = {Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16, Precision.FP32: torch.float32}[precision]
    return Placement(device, dtype, None if dtype is torch.float32 else dtype)
