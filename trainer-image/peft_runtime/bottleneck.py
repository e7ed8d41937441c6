"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer placement with `placement: [mlp]`).

peft has no bottleneck adapter and the `adapters` library pins transformers 4.x, so this is our own small
module, shaped like a PEFT model: `BottleneckModel(base, config)` freezes the base and adds, after the
attention and/or MLP block of every decoder layer, `h + up(act(down(h)))` with `up` initialised to zero
(training starts from the base model's exact outputs). `save_pretrained(dir)` writes adapter_config.json
(peft_type BOTTLENECK) and adapter_model.safetensors; `BottleneckModel.from_pretrained(base, dir)` loads
them back. The adapters are forward hooks on the sub-blocks, so the base model's weights and names stay
untouched (and the base can be shared).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

PEFT_TYPE = "BOTTLENECK"
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
_MLP_NAMES = ("mlp", "feed_forward", "ffn")
_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


@dataclass
class BottleneckConfig:
    reduction_factor: int = 16
    non_linearity: str = "relu"
    placement: list[str] = field(default_factory=lambda: ["mlp"])
    peft_type: str = PEFT_TYPE
    base_model_name_or_path: str | None = None
    hidden_size: int | None = None  # filled in when attached
    num_layers: int | None = None

    @property
    def target_modules(self) -> list[str]:
        return list(self.placement)

    def save_pretrained(self, directory: Path) -> None:
        Path(directory, CONFIG_NAME).write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_pretrained(cls, directory: Path) -> BottleneckConfig:
        values = json.loads(Path(directory, CONFIG_NAME).read_text())
        if values.get("peft_type") != PEFT_TYPE:
            raise ValueError(f"{directory} holds a {values.get('peft_type')} adapter, not a bottleneck adapter")
        return cls(**values)


class Bottleneck(nn.Module):
    """down-projection, non-linearity, up-projection (zero at start), residual."""

    def __init__(self, hidden_size: int, bottleneck_size: int, non_linearity: str):
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck_size)
        self.act = _ACTIVATIONS[non_linearity]()
        self.up = nn.Linear(bottleneck_size, hidden_size)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.disabled = False  # BottleneckModel.disable_adapter: the block's output passes unchanged

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        update: torch.Tensor = self.up(self.act(self.down(hidden.to(self.down.weight.dtype))))
        return hidden + update.to(hidden.dtype)


def _decoder_layers(model: nn.Module) -> nn.ModuleList:
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) and _child(module[0], _MLP_NAMES) is not None:
            return module
    raise ValueError(f"{type(model).__name__} has no decoder layers with an MLP block; bottleneck adapters need one")


def _child(layer: nn.Module, names: tuple[str, ...]) -> nn.Module | None:
    return next((getattr(layer, n) for n in names if isinstance(getattr(layer, n, None), nn.Module)), None)


def adapter_blocks(model: nn.Module, placement: list[str]) -> dict[str, nn.Module]:
    """The sub-blocks adapters follow, keyed as in the module dict: "<layer index>_<placement>"."""
    blocks = {}
    for index, layer in enumerate(_decoder_layers(model)):
        for place in placement:
            block = _child(layer, _ATTENTION_NAMES if place == "attention" else _MLP_NAMES)
            if block is None:
                raise ValueError(f"decoder layer {index} has no {place} block for a bottleneck adapter")
            blocks[f"{index}_{place}"] = block
    return blocks


def bottleneck_size(config: BottleneckConfig) -> int:
    return max(1, int(config.hidden_size or 0) // config.reduction_factor)


def stored_key(key: str) -> str:
    """Module-dict key "<i>_<placement>.<part>" -> the name on disk, "layers.<i>.<placement>.<part>"."""
    return "layers." + key.replace("_", ".", 1)


def module_key(name: str) -> str:
    """The name on disk -> the module-dict key (the inverse of stored_key)."""
    return name.removeprefix("layers.").replace(".", "_", 1)


def _after(adapter: Bottleneck) -> Any:
    def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        if adapter.disabled:
            return output
        if isinstance(output, tuple):
            return (adapter(output[0]), *output[1:])
        return adapter(output)

    return hook


class BottleneckModel(nn.Module):
    """A frozen base model with bottleneck adapters; forward and generate are the base model's."""

    def __init__(self, model: Any, config: BottleneckConfig):  # a transformers causal LM
        super().__init__()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        self.base_model: Any = model
        hidden = int(model.config.hidden_size)
        config.hidden_size, config.num_layers = hidden, len(_decoder_layers(model))
        config.base_model_name_or_path = config.base_model_name_or_path or getattr(model, "name_or_path", None)
        self.peft_config = {"default": config}
        self.adapters = nn.ModuleDict()
        self._hooks = []
        device = next(model.parameters()).device
        for key, block in adapter_blocks(model, config.placement).items():
            adapter = Bottleneck(hidden, bottleneck_size(config), config.non_linearity)
            self.adapters[key] = adapter.to(device)
            self._hooks.append(block.register_forward_hook(_after(adapter)))

    @property
    def config(self) -> Any:
        return self.base_model.config

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.base_model(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self.base_model.generate(*args, **kwargs)

    def get_base_model(self) -> Any:
        return self.base_model

    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """The base model's own outputs inside the block, as peft's context of the same name (DPO's reference)."""
        blocks = [module for module in self.adapters.modules() if isinstance(module, Bottleneck)]
        for block in blocks:
            block.disabled = True
        try:
            yield
        finally:
            for block in blocks:
                block.disabled = False

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        # On disk: layers.<i>.<placement>.(down|up).(weight|bias)
        return {stored_key(key): value.detach().contiguous() for key, value in self.adapters.state_dict().items()}

    def save_pretrained(self, directory: str | Path, **_: Any) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.peft_config["default"].save_pretrained(directory)
        save_file(self.adapter_state_dict(), str(directory / WEIGHTS_NAME), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(cls, model: nn.Module, directory: str | Path, is_trainable: bool = False) -> BottleneckModel:
        from safetensors.torch import load_file

        config = BottleneckConfig.from_pretrained(Path(directory))
        wrapped = cls(model, config)
        stored = load_file(str(Path(directory, WEIGHTS_NAME)))
        state = {module_key(key): value for key, value in stored.items()}
        wrapped.adapters.load_state_dict(state, strict=True)
        for parameter in wrapped.adapters.parameters():
            parameter.requires_grad_(is_trainable)
        if not is_trainable:
            wrapped.eval()
        return wrapped

    def remove(self) -> Any:
        """Detach the adapters and return the untouched base model."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        return self.base_model
