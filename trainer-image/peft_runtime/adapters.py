"""Load any adapter this runtime trains onto a base model (PEFT methods and our bottleneck adapters)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .bottleneck import PEFT_TYPE as BOTTLENECK_TYPE
from .bottleneck import BottleneckModel


def adapter_type(directory: str | Path) -> str:
    """peft_type from adapter_config.json: LORA, IA3, PREFIX_TUNING, PROMPT_TUNING or BOTTLENECK."""
    return str(json.loads(Path(directory, "adapter_config.json").read_text())["peft_type"])


def load_adapter(base_model: Any, directory: str | Path, *, is_trainable: bool = False) -> Any:
    """The base model with the adapter in `directory` applied (PeftModel or BottleneckModel)."""
    if adapter_type(directory) == BOTTLENECK_TYPE:
        return BottleneckModel.from_pretrained(base_model, directory, is_trainable=is_trainable)
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model, str(directory), is_trainable=is_trainable)
