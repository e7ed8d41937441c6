"""The PEFT methods a FineTuneJob can use: exactly one member is set, named by `type`."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field, JsonValue, model_validator

from .base import ApiModel


class MethodType(StrEnum):
    LORA = "lora"
    QLORA = "qlora"
    DORA = "dora"
    IA3 = "ia3"
    PREFIX = "prefix"
    PROMPT = "prompt"
    ADAPTER = "adapter"


# Methods whose weights fold into the base model (qlora's into the de-quantized base): a merged export.
MERGEABLE_METHODS = (MethodType.LORA, MethodType.DORA, MethodType.QLORA, MethodType.IA3)


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


_MEMBER_BY_TYPE: dict[MethodType, str] = {
    MethodType.LORA: "lora",
    MethodType.QLORA: "qlora",
    MethodType.DORA: "dora",
    MethodType.IA3: "ia3",
    MethodType.PREFIX: "prefix",
    MethodType.PROMPT: "prompt",
    MethodType.ADAPTER: "adapter",
}


def _cel_rules() -> list[JsonValue]:
    rules: list[JsonValue] = [
        {
            "rule": f"self.type == '{t.value}' || !has(self.{member})",
            "message": f"{member} parameters are set but type is not '{t.value}': a job uses exactly one method",
        }
        for t, member in _MEMBER_BY_TYPE.items()
    ]
    rules.append(
        {
            "rule": "self.type != 'qlora' || has(self.qlora)",
            "message": "type qlora needs qlora.quantization, e.g. qlora: {quantization: {bits: 4}}",
        }
    )
    return rules


class Method(ApiModel):
    """The PEFT method: `type` picks one, and only that method's parameters may be set."""

    model_config = {"json_schema_extra": {"x-kubernetes-validations": _cel_rules()}}

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
    def _only_the_chosen_method(self) -> Method:
        wanted = _MEMBER_BY_TYPE[self.type]
        others = [m for m in _MEMBER_BY_TYPE.values() if m != wanted and getattr(self, m) is not None]
        if others:
            raise ValueError(
                f"type is '{self.type.value}' but parameters for {', '.join(others)} are set; "
                "a job uses exactly one method: remove the other blocks or create one job per method"
            )
        if self.type is MethodType.QLORA and self.qlora is None:
            raise ValueError("type qlora needs qlora.quantization, e.g. qlora: {quantization: {bits: 4}}")
        if getattr(self, wanted) is None:
            # Parameters are optional for every other method: fill in the defaults explicitly.
            defaults: dict[MethodType, Any] = {
                MethodType.LORA: LoraParameters,
                MethodType.DORA: DoraParameters,
                MethodType.IA3: Ia3Parameters,
                MethodType.PREFIX: PrefixParameters,
                MethodType.PROMPT: PromptParameters,
                MethodType.ADAPTER: BottleneckParameters,
            }
            object.__setattr__(self, wanted, defaults[self.type]())
        return self

    @property
    def parameters(self) -> ApiModel:
        """The parameters of the chosen method (always set after validation)."""
        value = getattr(self, _MEMBER_BY_TYPE[self.type])
        assert value is not None
        return value  # type: ignore[no-any-return]

    @property
    def rank(self) -> int | None:
        """The adapter's rank where the method has one (LoRA family)."""
        return getattr(self.parameters, "r", None)
