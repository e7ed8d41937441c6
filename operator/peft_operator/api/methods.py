"""The PEFT methods a FineTuneJob can use: exactly one member is set, named by `type`."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field, model_validator

from .base import ApiModel
from .rules import Rule, RuledModel


class MethodType(StrEnum):
    LORA = "lora"
    QLORA = "qlora"
    DORA = "dora"
    IA3 = "ia3"
    PREFIX = "prefix"
    PROMPT = "prompt"
    ADAPTER = "adapter"


ModuleName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.*\[\]-]+$")]
TargetModules = Annotated[
    list[ModuleName],
    Field(
        min_length=1,
        max_length=64,
        description=(
            "Names (suffixes) of the modules the adapter wraps, e.g. [q_proj, v_proj]. "
            "Leave empty to use the method's default for the model architecture."
        ),
    ),
]


class LoraParameters(ApiModel):
    """Low-rank adaptation: two small matrices of rank r beside each target module."""

    r: int = Field(default=16, ge=1, le=1024, description="Rank of the update matrices.")
    alpha: int = Field(default=32, ge=1, le=4096, description="Scaling numerator: the update is scaled by alpha/r.")
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0, description="Dropout on the adapter's input.")
    target_modules: TargetModules | None = None
    modules_to_save: list[ModuleName] | None = Field(
        default=None,
        max_length=16,
        description="Modules trained in full and saved with the adapter, e.g. [lm_head].",
    )


class QuantizationType(StrEnum):
    NF4 = "nf4"
    FP4 = "fp4"


class ComputeDtype(StrEnum):
    AUTO = "auto"  # bfloat16 on GPU, float32 on CPU (bf16 compute is far slower on CPU)
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"
    FLOAT32 = "float32"


class Quantization(ApiModel):
    """How the frozen base model is quantized (bitsandbytes)."""

    bits: int = Field(ge=4, le=4, description="Bits per base-model weight; QLoRA uses 4.")
    type: QuantizationType = Field(default=QuantizationType.NF4, description="4-bit data type: nf4 or fp4.")
    double_quant: bool = Field(default=True, description="Also quantize the quantization constants.")
    compute_dtype: ComputeDtype = Field(default=ComputeDtype.AUTO, description="dtype of the matmuls.")


class QLoraParameters(LoraParameters):
    """LoRA on a 4-bit quantized, frozen base model."""

    quantization: Quantization = Field(description="Required: how the base model is quantized, e.g. {bits: 4}.")


class DoraParameters(LoraParameters):
    """Weight-decomposed LoRA: LoRA on the direction plus a trained magnitude vector."""


class Ia3Parameters(ApiModel):
    """IA3: learned vectors that rescale keys, values and feed-forward activations."""

    target_modules: TargetModules | None = None
    feedforward_modules: list[ModuleName] | None = Field(
        default=None,
        max_length=64,
        description="The subset of targetModules that are feed-forward layers (scaled on their input).",
    )


class PrefixParameters(ApiModel):
    """Prefix tuning: trained key/value vectors prepended at every layer."""

    num_virtual_tokens: int = Field(default=20, ge=1, le=512, description="Length of the trained prefix.")


class PromptParameters(ApiModel):
    """Prompt tuning: trained embeddings prepended to the input."""

    num_virtual_tokens: int = Field(default=20, ge=1, le=512, description="Number of trained soft tokens.")
    init_text: str | None = Field(
        default=None,
        max_length=2048,
        description="Initialise the soft tokens from this text instead of random values.",
    )


class NonLinearity(StrEnum):
    RELU = "relu"
    GELU = "gelu"
    SILU = "silu"


class AdapterPlacement(StrEnum):
    ATTENTION = "attention"
    MLP = "mlp"


class BottleneckParameters(ApiModel):
    """Houlsby/Pfeiffer bottleneck adapters: down-project, non-linearity, up-project, residual."""

    reduction_factor: int = Field(
        default=16, ge=1, le=1024, description="hidden size / bottleneck size of each adapter."
    )
    non_linearity: NonLinearity = Field(default=NonLinearity.RELU, description="Activation in the bottleneck.")
    placement: list[AdapterPlacement] = Field(
        default_factory=lambda: [AdapterPlacement.MLP],
        min_length=1,
        max_length=2,
        description="Where adapters sit in each decoder layer: after 'attention', after 'mlp', or both.",
    )


@dataclass(frozen=True)
class MethodTraits:
    """What the operator and the runtime need to know of one method. Adding a method is one entry here
    (plus its mapping to a PEFT config in the trainer); nothing else lists methods."""

    parameters: type[ApiModel]  # the model of its parameters block, `method.<type>`
    peft_type: str  # adapter_config.json's peft_type: lora, qlora and dora all save LORA (dora with use_dora)
    mergeable: bool  # the weights fold into the base model (qlora's into the de-quantized base): output.merged
    prompt_learning: bool  # virtual tokens prepended to the input: packing would split them from their row
    needs_gpu: bool  # bitsandbytes 4-bit kernels: no CPU training in a cluster
    vllm_hot_loads: bool  # vLLM's runtime LoRA API takes it (the built-in engine hot-loads every method)


METHODS: dict[MethodType, MethodTraits] = {
    MethodType.LORA: MethodTraits(LoraParameters, "LORA", True, False, False, True),
    MethodType.QLORA: MethodTraits(QLoraParameters, "LORA", True, False, True, True),
    MethodType.DORA: MethodTraits(DoraParameters, "LORA", True, False, False, False),
    MethodType.IA3: MethodTraits(Ia3Parameters, "IA3", True, False, False, False),
    MethodType.PREFIX: MethodTraits(PrefixParameters, "PREFIX_TUNING", False, True, False, False),
    MethodType.PROMPT: MethodTraits(PromptParameters, "PROMPT_TUNING", False, True, False, False),
    MethodType.ADAPTER: MethodTraits(BottleneckParameters, "BOTTLENECK", False, False, False, False),
}
MERGEABLE_METHODS = tuple(t for t, traits in METHODS.items() if traits.mergeable)
PROMPT_LEARNING_METHODS = frozenset(t for t, traits in METHODS.items() if traits.prompt_learning)
VLLM_METHODS = tuple(t for t, traits in METHODS.items() if traits.vllm_hot_loads)


def method_of_adapter_config(config: dict[str, Any]) -> str:
    """Our method name for a saved adapter_config.json (qlora adapters read back as lora: same weights)."""
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type == "LORA":
        return MethodType.DORA.value if config.get("use_dora") else MethodType.LORA.value
    named = [t.value for t, traits in METHODS.items() if traits.peft_type == peft_type]
    return named[0] if named else peft_type.lower()


def _only_this_method(method_type: MethodType) -> Rule:
    member = method_type.value  # each method's parameters block is named after its type
    return Rule(
        f"self.type == '{member}' || !has(self.{member})",
        f"{member} parameters are set but type is not '{member}': a job uses exactly one method; "
        f"remove the {member} block or create one job per method",
        lambda m: m.type is method_type or getattr(m, member) is None,
    )


class Method(RuledModel):
    """The PEFT method: `type` picks one, and only that method's parameters may be set."""

    RULES = (
        *(_only_this_method(t) for t in MethodType),
        Rule(
            "self.type != 'qlora' || has(self.qlora)",
            "type qlora needs qlora.quantization, e.g. qlora: {quantization: {bits: 4}}",
            lambda m: m.type is not MethodType.QLORA or m.qlora is not None,
        ),
    )

    type: MethodType = Field(description="One of lora, qlora, dora, ia3, prefix, prompt, adapter.")
    lora: LoraParameters | None = Field(default=None, description="Parameters when type is lora.")
    qlora: QLoraParameters | None = Field(
        default=None, description="Parameters when type is qlora (quantization is required)."
    )
    dora: DoraParameters | None = Field(default=None, description="Parameters when type is dora.")
    ia3: Ia3Parameters | None = Field(default=None, description="Parameters when type is ia3.")
    prefix: PrefixParameters | None = Field(default=None, description="Parameters when type is prefix.")
    prompt: PromptParameters | None = Field(default=None, description="Parameters when type is prompt.")
    adapter: BottleneckParameters | None = Field(
        default=None, description="Parameters when type is adapter (bottleneck adapters)."
    )

    @model_validator(mode="after")
    def _fill_default_parameters(self) -> Method:
        # Parameters are optional for every method but qlora (its rule asks for the quantization): fill in
        # the defaults explicitly.
        if getattr(self, self.type.value) is None and self.type is not MethodType.QLORA:
            object.__setattr__(self, self.type.value, METHODS[self.type].parameters())
        return self

    @property
    def parameters(self) -> ApiModel:
        """The parameters of the chosen method (always set after validation)."""
        value = getattr(self, self.type.value)
        assert value is not None
        return value  # type: ignore[no-any-return]

    @property
    def rank(self) -> int | None:
        """The adapter's rank where the method has one (LoRA family)."""
        return getattr(self.parameters, "r", None)
