"""Our API's methods -> one config object each (HF PEFT style), and the one way an adapter is attached.

Adding a method means adding one mapping function to MAPPINGS; the trainer never branches on the method.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import torch

from peft_operator.api.methods import (
    BottleneckParameters,
    ComputeDtype,
    Ia3Parameters,
    LoraParameters,
    Method,
    MethodType,
    PrefixParameters,
    PromptParameters,
    QLoraParameters,
)

from ..bottleneck import BottleneckConfig, BottleneckModel
from .errors import configuration_error, model_unavailable
from .memory import release_freed_memory


@dataclass(frozen=True)
class MethodContext:
    model_dir: Path
    device: torch.device
    quant_storage: torch.dtype = torch.uint8  # qlora's packed 4-bit weights; strategy fsdp stores them as it shards


@dataclass(frozen=True)
class MethodSetup:
    type: MethodType
    adapter_config: Any  # a peft.PeftConfig, or our BottleneckConfig
    quantization: Any = None  # transformers.BitsAndBytesConfig for qlora
    gradient_checkpointing: bool = False  # recompute the blocks' activations in the backward pass

    @property
    def virtual_tokens_in_input(self) -> int:
        """Prompt tuning prepends its soft tokens to the input sequence (prefix tuning uses the KV cache)."""
        return int(self.adapter_config.num_virtual_tokens) if self.type is MethodType.PROMPT else 0


def _lora_config(p: LoraParameters, **extra: Any) -> Any:
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=p.r,
        lora_alpha=p.alpha,
        lora_dropout=p.dropout,
        target_modules=p.target_modules,  # None: peft's default for the architecture
        modules_to_save=p.modules_to_save,
        **extra,
    )


def _lora(p: LoraParameters, _: MethodContext) -> MethodSetup:
    return MethodSetup(MethodType.LORA, _lora_config(p))


def _dora(p: LoraParameters, _: MethodContext) -> MethodSetup:
    return MethodSetup(MethodType.DORA, _lora_config(p, use_dora=True))


def compute_dtype(setting: ComputeDtype, device: torch.device) -> torch.dtype:
    if setting is ComputeDtype.AUTO:
        # bf16 matmuls on CPU were 13x slower than fp32 (see docs/trainer.md)
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[setting.value]


def _qlora(p: QLoraParameters, context: MethodContext) -> MethodSetup:
    from transformers import BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=p.quantization.type.value,
        bnb_4bit_use_double_quant=p.quantization.double_quant,
        bnb_4bit_compute_dtype=compute_dtype(p.quantization.compute_dtype, context.device),
        bnb_4bit_quant_storage=context.quant_storage,
    )
    return MethodSetup(MethodType.QLORA, _lora_config(p), quantization, gradient_checkpointing=True)


def _ia3(p: Ia3Parameters, context: MethodContext) -> MethodSetup:
    from peft import IA3Config, TaskType
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FEEDFORWARD

    feedforward = p.feedforward_modules
    if p.target_modules is not None and feedforward is None:
        # Explicit targets: those among the architecture's usual feed-forward modules are scaled on input.
        model_type = json.loads((context.model_dir / "config.json").read_text()).get("model_type", "")
        feedforward = [m for m in p.target_modules if m in FEEDFORWARD.get(model_type, [])]
    return MethodSetup(
        MethodType.IA3,
        IA3Config(task_type=TaskType.CAUSAL_LM, target_modules=p.target_modules, feedforward_modules=feedforward),
    )


def _prefix(p: PrefixParameters, _: MethodContext) -> MethodSetup:
    from peft import PrefixTuningConfig, TaskType

    return MethodSetup(
        MethodType.PREFIX, PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=p.num_virtual_tokens)
    )


def _prompt(p: PromptParameters, context: MethodContext) -> MethodSetup:
    from peft import PromptTuningConfig, PromptTuningInit, TaskType

    from_text: dict[str, Any] = {}
    if p.init_text:
        from_text = {
            "prompt_tuning_init": PromptTuningInit.TEXT,
            "prompt_tuning_init_text": p.init_text,
            "tokenizer_name_or_path": str(context.model_dir),
        }
    return MethodSetup(
        MethodType.PROMPT,
        PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=p.num_virtual_tokens, **from_text),
    )


def _adapter(p: BottleneckParameters, _: MethodContext) -> MethodSetup:
    return MethodSetup(
        MethodType.ADAPTER,
        BottleneckConfig(
            reduction_factor=p.reduction_factor,
            non_linearity=p.non_linearity.value,
            placement=[place.value for place in p.placement],
        ),
    )


MAPPINGS: dict[MethodType, Callable[[Any, MethodContext], MethodSetup]] = {
    MethodType.LORA: _lora,
    MethodType.DORA: _dora,
    MethodType.QLORA: _qlora,
    MethodType.IA3: _ia3,
    MethodType.PREFIX: _prefix,
    MethodType.PROMPT: _prompt,
    MethodType.ADAPTER: _adapter,
}


def method_setup(method: Method, context: MethodContext) -> MethodSetup:
    """The config object(s) for the job's one method."""
    return MAPPINGS[method.type](method.parameters, context)


def attach_adapter(model: Any, setup: MethodSetup) -> Any:
    """Freeze the base model and add the adapter: the single path every method takes."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    # Non-reentrant checkpointing: it needs no input that requires grad (the base is frozen).
    checkpointing = {"use_reentrant": False}
    if setup.quantization is not None:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=setup.gradient_checkpointing,
            gradient_checkpointing_kwargs=checkpointing,
        )
    elif setup.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
    try:
        if isinstance(setup.adapter_config, BottleneckConfig):  # placements, found by its own code
            return BottleneckModel(model, setup.adapter_config)
        # peft refuses targets only when none of them exists; one typo among several would train less silently.
        if missing := _missing_targets(model, setup.adapter_config):
            _refuse(model, setup, f"it has no module named {', '.join(missing)}")
        return get_peft_model(model, setup.adapter_config)
    except ValueError as error:  # e.g. target modules the model does not have
        _refuse(model, setup, str(error))


def _missing_targets(model: Any, config: Any) -> list[str]:
    """Listed targets (targetModules, feedforwardModules, modulesToSave) that name no module of the model."""
    listed: list[str] = []
    for attribute in ("target_modules", "feedforward_modules", "modules_to_save"):
        value = getattr(config, attribute, None)
        if value is not None and not isinstance(value, str):  # a string is a regular expression
            listed += [name for name in sorted(value) if name not in listed]
    names = [name for name, _ in model.named_modules()]
    return [t for t in listed if not any(n == t or n.endswith(f".{t}") for n in names)]


def _refuse(model: Any, setup: MethodSetup, why: str) -> NoReturn:
    linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if _is_linear(m)})
    raise configuration_error(
        f"cannot apply {setup.type.value} to this model: {why}. Its linear modules are: {', '.join(linear)}"
    )


def adapter_on_meta_model(model_dir: Path, setup: MethodSetup) -> Any:
    """The adapter attached to the base model built on the meta device from its config alone: no weight is
    read or allocated, yet every module name is real, so a wrong target fails as it would in training (a
    ConfigurationError listing the model's linear modules). qlora's 4-bit layers keep the names of the
    layers they replace, so its targets are checked on the unquantized structure."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(model_dir))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception as error:
        raise model_unavailable(f"cannot build the base model from its config.json in {model_dir}: {error}") from error
    return attach_adapter(model, replace(setup, quantization=None))


def _is_linear(module: Any) -> bool:
    return isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt")


def trainable_summary(model: Any) -> str:
    """`Trainable parameters: 8,192 of 1,059,904 (0.77%)`, shown once at the start of a run."""
    total = trainable = 0
    for parameter in model.parameters():
        total += parameter.numel()
        trainable += parameter.numel() if parameter.requires_grad else 0
    share = 100 * trainable / total if total else 0.0
    return f"Trainable parameters: {trainable:,} of {total:,} ({share:.2f}%)"


def target_modules(model: Any, setup: MethodSetup) -> list[str]:
    """The module names the adapter actually wraps, for the manifest."""
    config = setup.adapter_config
    if isinstance(config, BottleneckConfig):
        return config.target_modules
    peft_config = model.peft_config["default"]
    targets = getattr(peft_config, "target_modules", None)
    if targets is None:
        return []
    return sorted(targets) if not isinstance(targets, str) else [targets]


def keep_4bit_layers_differentiable(model: Any) -> None:
    """Keep bitsandbytes' 4-bit layers on their autograd path for the whole run.

    On CPUs with AVX512-BF16, a 4-bit layer's first no-grad eval-mode forward (our start-up probe, every
    eval pass) repacks its weights for an inference kernel that has no autograd: from then on no gradient
    flows through it to earlier layers, and QLoRA 'trains' with a rising loss. Other CPUs never take that
    path, so the flag is turned off everywhere and the run is the same on every machine.
    """
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False


def load_base_model(model_dir: Path, setup: MethodSetup, dtype: torch.dtype, device: torch.device) -> Any:
    """The frozen base model: 4-bit (bitsandbytes) for qlora, `dtype` otherwise."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype}
    if setup.quantization is not None:
        kwargs.update(quantization_config=setup.quantization, device_map={"": device})
    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
    if setup.quantization is None:
        model.to(device)
    else:
        keep_4bit_layers_differentiable(model)
    model.config.use_cache = False
    release_freed_memory()  # e.g. the full-precision weights qlora quantized
    return model
