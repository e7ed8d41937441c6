"""FineTuneJob: one training run that turns a base model and a dataset into a PEFT adapter."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator

from .base import ApiModel, Condition, DnsLabel, ObjectMeta, SecretKeyRef, SecretRef
from .methods import MERGEABLE_METHODS, Method, MethodType
from .rules import Rule, RuledModel, check
from .uris import DatasetUri, ModelUri, OutputUri

# The Job is named <name>-train and its pods carry the name in a 63-character label.
MAX_NAME_LENGTH = 52

_QUANTITY = r"^([0-9]+(\.[0-9]+)?)(m|k|Ki|M|Mi|G|Gi|T|Ti)?$"
_DURATION = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$"
_DURATION_RE = re.compile(_DURATION)


def duration_seconds(value: str) -> int:
    """Parse a Kubernetes-style duration such as '90m' or '1h30m' into seconds."""
    match = _DURATION_RE.match(value)
    if not value or match is None:
        raise ValueError(f"'{value}' is not a duration; write it like 30m, 6h or 1h30m")
    hours, minutes, seconds = (int(g[:-1]) if g else 0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


class BaseModelSource(ApiModel):
    """Where the frozen base model comes from."""

    uri: ModelUri = Field(
        description="hf://org/name, pvc://claim/path, s3://bucket/prefix, or file:///path in local mode."
    )
    revision: str | None = Field(
        default=None,
        max_length=256,
        pattern=r"^[A-Za-z0-9._/-]+$",
        description="Branch, tag or commit of an hf:// model. Pin a commit for reproducible jobs.",
    )
    token_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding a Hub token, for gated or private models."
    )
    credentials_secret_ref: SecretRef | None = Field(
        default=None, description="Secret with S3 credentials, for an s3:// model."
    )


class DatasetFormat(StrEnum):
    CHAT = "chat"  # {"messages": [{"role": ..., "content": ...}]}: loss on assistant turns
    INSTRUCTION = "instruction"  # {"prompt": ..., "completion": ...}: loss on the completion
    TEXT = "text"  # {"text": ...}: loss on every token
    # {"prompt", "chosen", "rejected"}: strings, or lists of chat messages; for training.objective dpo
    PREFERENCE = "preference"


class Dataset(ApiModel):
    """The training data: JSON Lines or Parquet rows in one of three formats."""

    uri: DatasetUri = Field(
        description=(
            "hf://org/name, pvc://claim/path, s3://bucket/key, configmap://name/key (small sets), "
            "or file:///path in local mode. A directory means every .jsonl/.parquet file in it."
        )
    )
    format: DatasetFormat = Field(
        description="chat (messages), instruction (prompt/completion), text (text), or preference "
        "(prompt/chosen/rejected, for training.objective dpo)."
    )
    validation_split: float = Field(
        default=0.1, ge=0.0, le=0.5, description="Fraction of rows held out to compute evalLoss."
    )
    credentials_secret_ref: SecretRef | None = Field(
        default=None, description="Secret with S3 credentials or an HF_TOKEN, exposed as environment."
    )


class LrScheduler(StrEnum):
    COSINE = "cosine"
    LINEAR = "linear"
    CONSTANT = "constant"


class Precision(StrEnum):
    AUTO = "auto"  # bf16 on GPUs that support it, fp32 on CPU
    BF16 = "bf16"
    FP16 = "fp16"
    FP32 = "fp32"


# Decimal numbers in the spec are strings (Kubernetes' API conventions discourage floats).
DECIMAL_PATTERN = r"^[0-9]+(\.[0-9]+)?([eE]-?[0-9]+)?$"

LearningRate = Annotated[
    str,
    Field(
        max_length=32,
        json_schema_extra={"pattern": DECIMAL_PATTERN},
        description="Peak learning rate as a decimal string, e.g. '2e-4' (strings avoid float drift).",
    ),
]


class Strategy(StrEnum):
    """How several training processes share the work (one process: neither applies)."""

    AUTO = "auto"  # fsdp when the base model's weights take over half of one GPU's memory, else ddp
    DDP = "ddp"  # every process holds the whole base model; gradients are summed across them
    FSDP = "fsdp"  # the base model's transformer blocks are sharded across the processes


class Objective(StrEnum):
    SFT = "sft"  # supervised fine-tuning: cross-entropy on the answer tokens
    DPO = "dpo"  # direct preference optimization on (prompt, chosen, rejected) pairs


class DpoParameters(ApiModel):
    """Direct preference optimization: the reference policy is the base model with the adapter disabled."""

    beta: str = Field(
        default="0.1",
        max_length=32,
        json_schema_extra={"pattern": DECIMAL_PATTERN},
        description="How strongly the adapter is held to the reference policy (the base model): higher stays "
        "closer. A decimal string, typically '0.01' to '0.5'.",
    )

    @field_validator("beta")
    @classmethod
    def _positive(cls, value: str) -> str:
        try:
            beta = float(value)
        except ValueError:
            raise ValueError(f"'{value}' is not a number; write it like '0.1'") from None
        if beta <= 0:
            raise ValueError(f"{value} must be above 0, e.g. '0.1'")
        return value


class Training(RuledModel):
    """Hyperparameters. Train for `epochs` or stop at `maxSteps`, not both."""

    RULES = (
        Rule(
            "!(has(self.epochs) && has(self.maxSteps))",
            "set epochs or maxSteps, not both",
            lambda s: s.epochs is None or s.max_steps is None,
        ),
        Rule(
            "!has(self.dpo) || (has(self.objective) && self.objective == 'dpo')",
            "training.dpo is set but training.objective is not dpo: set objective: dpo or remove the dpo block",
            lambda s: s.dpo is None or s.objective is Objective.DPO,
        ),
        Rule(
            "!has(self.objective) || self.objective != 'dpo' || !has(self.packing) || !self.packing",
            "packing does not apply to objective dpo (each pair is scored as two whole sequences); "
            "set training.packing to false",
            lambda s: s.objective is not Objective.DPO or not s.packing,
        ),
    )

    objective: Objective = Field(
        default=Objective.SFT,
        description="sft: learn the answers (chat, instruction, text data); dpo: learn to prefer the chosen answer "
        "over the rejected one (preference data).",
    )
    dpo: DpoParameters | None = Field(default=None, description="DPO parameters (objective dpo; beta 0.1 if unset).")

    epochs: int | None = Field(default=None, ge=1, le=1000, description="Passes over the data (3 if unset).")
    max_steps: int | None = Field(default=None, ge=1, le=10_000_000, description="Optimizer steps, instead of epochs.")
    learning_rate: LearningRate = "2e-4"
    lr_scheduler: LrScheduler = Field(default=LrScheduler.COSINE, description="Decay after warmup.")
    warmup_steps: int = Field(default=0, ge=0, le=1_000_000, description="Linear warmup steps.")
    batch_size: int = Field(
        default=8,
        ge=1,
        le=4096,
        description="Rows per micro-batch per training process (one per GPU, or one per pod on CPU): the global "
        "batch is batchSize x processes x gradientAccumulation rows (status.progress.processes says how many ran).",
    )
    gradient_accumulation: int = Field(
        default=1, ge=1, le=1024, description="Micro-batches per optimizer step, per training process."
    )
    strategy: Strategy = Field(
        default=Strategy.AUTO,
        description="With several processes: ddp gives each the whole base model; fsdp shards the base model's "
        "transformer blocks across them (FSDP2; qlora's 4-bit weights too), for a base that does not fit one GPU. "
        "auto picks fsdp when the base model's weights take over half of one GPU's memory, ddp otherwise (and on "
        "CPU). Both train the same steps on the same rows; status.progress.strategy says which one ran.",
    )
    max_seq_length: int = Field(
        default=1024, ge=16, le=131072, description="Tokens per row; longer rows are truncated."
    )
    packing: bool = Field(default=False, description="Pack several short rows into one sequence.")
    gradient_checkpointing: bool | None = Field(
        default=None,
        description="Recompute each transformer block's activations during the backward pass instead of keeping "
        "them from the forward: far less memory for long sequences and large bases, for about one more forward's "
        "compute. Unset: on for qlora, off for the other methods.",
    )
    seed: int = Field(default=42, ge=0, le=2**31 - 1, description="Seed for data order, init and dropout.")
    checkpoint_every: int = Field(
        default=100, ge=1, le=1_000_000, description="Save a resumable checkpoint every N steps."
    )
    eval_every: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Evaluate every N steps (default: at checkpoints)."
    )
    precision: Precision = Field(default=Precision.AUTO, description="Training precision.")

    @field_validator("learning_rate")
    @classmethod
    def _sane_learning_rate(cls, value: str) -> str:
        try:
            rate = float(value)
        except ValueError:
            raise ValueError(f"'{value}' is not a number; write it like '2e-4' or '0.0001'") from None
        if not 0 < rate < 1:
            raise ValueError(f"{value} is outside (0, 1); PEFT learning rates are typically 1e-5 to 1e-3")
        return value

    @property
    def learning_rate_value(self) -> float:
        return float(self.learning_rate)


Quantity = Annotated[
    str, Field(max_length=64, pattern=_QUANTITY, description="A Kubernetes quantity, e.g. 8, 500m, 32Gi.")
]


class TolerationOperator(StrEnum):
    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(StrEnum):
    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class Toleration(ApiModel):
    """A core/v1 Toleration, passed to the pods unchanged."""

    key: str | None = Field(default=None, max_length=317, description="Taint key to tolerate (all if unset).")
    operator: TolerationOperator | None = Field(default=None, description="Exists or Equal (default Equal).")
    value: str | None = Field(default=None, max_length=63, description="Taint value, for operator Equal.")
    effect: TaintEffect | None = Field(default=None, description="Taint effect to tolerate (all if unset).")
    toleration_seconds: int | None = Field(
        default=None, ge=0, description="How long a NoExecute taint is tolerated before eviction."
    )


MAX_NODES = 32


class ComputeResources(ApiModel):
    """What each pod needs and where it may run."""

    gpus: int = Field(default=1, ge=0, le=16, description="GPUs per pod; 0 runs on CPU (small models only).")
    gpu_resource_name: str = Field(
        default="nvidia.com/gpu",
        max_length=253,
        pattern=r"^[a-z0-9.-]+/[a-z0-9.-]+$",
        description="Extended resource that the GPUs are requested as.",
    )
    cpu: Quantity | None = Field(default=None, description="CPU request and limit, e.g. 8 or 500m.")
    memory: Quantity | None = Field(default=None, description="Memory request and limit, e.g. 32Gi.")
    node_selector: dict[str, Annotated[str, Field(max_length=63)]] | None = Field(
        default=None, max_length=32, description="Labels a node must have, e.g. a GPU product label."
    )
    tolerations: list[Toleration] | None = Field(
        default=None, max_length=32, description="Taints to tolerate, e.g. on dedicated GPU nodes."
    )
    priority_class_name: str | None = Field(
        default=None, max_length=253, description="PriorityClass of the pods (preemption order)."
    )


class Resources(ComputeResources):
    """What each training pod needs and where it may run."""

    nodes: int = Field(
        default=1,
        ge=1,
        le=MAX_NODES,
        description="Training pods, one per node, each with `gpus` GPUs: an Indexed Job whose pods meet through "
        "torchrun's c10d rendezvous on pod 0 (a headless Service names them). The run has max(gpus, 1) x nodes "
        "processes; if one pod fails the others restart with its replacement from the newest checkpoint. The "
        "output must be s3:// or a pvc:// claim every node can mount (ReadWriteMany).",
    )

    @property
    def processes(self) -> int:
        """Training processes of the run: one per GPU (one per pod on CPU), on every node."""
        return max(self.gpus, 1) * self.nodes


class Queue(ApiModel):
    """Kueue admission: the Job is created suspended and labelled for this LocalQueue."""

    name: DnsLabel = Field(description="Kueue LocalQueue in the job's namespace.")
    priority_class: DnsLabel | None = Field(default=None, description="Kueue WorkloadPriorityClass.")


class Output(ApiModel):
    """Where the adapter and its checkpoints are written."""

    uri: OutputUri = Field(description="s3://bucket/prefix, pvc://claim/path, or file:///path in local mode.")
    credentials_secret_ref: SecretRef | None = Field(default=None, description="Secret with S3 credentials.")
    merged: bool = Field(
        default=False,
        description="Also write the base model with the adapter merged in, to <uri>/merged (lora, dora, qlora "
        "de-quantized, ia3): served like any full model with no adapter overhead, but one tenant per copy.",
    )


class DeployGate(RuledModel):
    """What the trained adapter must show before it is deployed; every condition set must hold."""

    RULES = (
        Rule(
            "has(self.maxEvalLoss) || has(self.minEvalRows)",
            "deploy.when needs at least one condition: maxEvalLoss or minEvalRows",
            lambda gate: gate.max_eval_loss is not None or gate.min_eval_rows is not None,
        ),
    )

    max_eval_loss: str | None = Field(
        default=None,
        max_length=32,
        json_schema_extra={"pattern": DECIMAL_PATTERN},
        description="Deploy only when the final evalLoss (on the validation split) is at most this, e.g. '1.5'.",
    )
    min_eval_rows: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="Deploy only when evalLoss was measured on at least this many held-out rows.",
    )

    @field_validator("max_eval_loss")
    @classmethod
    def _a_number(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                float(value)
            except ValueError:
                raise ValueError(f"'{value}' is not a number; write it like '1.5'") from None
        return value


class Deploy(ApiModel):
    """On success, add the adapter to an AdapterDeployment in the same namespace."""

    adapter_deployment: DnsLabel = Field(description="Name of the AdapterDeployment.")
    adapter_name: DnsLabel | None = Field(default=None, description="Name to serve it under (the job's name if unset).")
    replaces: DnsLabel | None = Field(
        default=None,
        description=(
            "The FineTuneJob this one is a new version of. An adapter name already in the AdapterDeployment is "
            "taken over only when its entry names this job or the one given here; any other entry is left alone."
        ),
    )
    when: DeployGate | None = Field(
        default=None,
        description="Deploy only if the finished job meets these conditions (an eval gate); otherwise the "
        "Deployed condition is False with reason EvalGateNotMet and the measured values.",
    )


class RunPolicy(ApiModel):
    """Limits on the training Job."""

    max_runtime: str = Field(
        default="24h",
        max_length=32,
        json_schema_extra={"pattern": _DURATION},
        description="Wall-clock limit (activeDeadlineSeconds), e.g. 6h or 90m.",
    )
    backoff_limit: int = Field(
        default=3, ge=0, le=100, description="Retries after pod failures (preemptions are not counted)."
    )

    @field_validator("max_runtime")
    @classmethod
    def _valid_duration(cls, value: str) -> str:
        if duration_seconds(value) <= 0:
            raise ValueError("maxRuntime must be longer than 0s, e.g. 6h")
        return value


_NOT_MERGEABLE = [t.value for t in MethodType if t not in MERGEABLE_METHODS]
MERGE_REFUSAL = (
    "output.merged needs a method whose weights merge into the base model "
    f"({', '.join(t.value for t in MERGEABLE_METHODS)}); serve {', '.join(_NOT_MERGEABLE[:-1])} and "
    f"{_NOT_MERGEABLE[-1]} methods hot-loaded, or set output.merged to false"
)


class FineTuneJobSpec(RuledModel):
    """What to train. Immutable once created: a new version is a new FineTuneJob."""

    RULES = (
        Rule("self == oldSelf", "spec is immutable: create a new FineTuneJob for a new version", None),
        Rule(
            "!has(self.output.merged) || !self.output.merged || self.method.type in "
            + str([m.value for m in MERGEABLE_METHODS]),
            MERGE_REFUSAL,
            lambda s: not s.output.merged or s.method.type in MERGEABLE_METHODS,
        ),
        Rule(
            "(has(self.training.objective) && self.training.objective == 'dpo') == (self.dataset.format == 'preference')",
            "training.objective dpo learns from dataset.format preference (prompt, chosen, rejected), and preference "
            "data needs training.objective dpo: set both, or neither",
            lambda s: (s.training.objective is Objective.DPO) == (s.dataset.format is DatasetFormat.PREFERENCE),
        ),
        Rule(
            "self.method.type != 'prefix' || !has(self.training.gradientCheckpointing) || "
            "!self.training.gradientCheckpointing",
            "prefix tuning does not work with training.gradientCheckpointing (peft refuses the combination): set "
            "gradientCheckpointing to false or leave it unset",
            lambda s: s.method.type is not MethodType.PREFIX or not s.training.gradient_checkpointing,
        ),
        Rule(
            "!has(self.deploy) || !has(self.deploy.when) || self.dataset.validationSplit > 0",
            "deploy.when judges the held-out rows, and dataset.validationSplit is 0: set validationSplit "
            "above 0 (e.g. 0.1) or remove deploy.when",
            lambda s: s.deploy is None or s.deploy.when is None or s.dataset.validation_split > 0,
        ),
    )

    base_model: BaseModelSource = Field(description="The frozen base model.")
    dataset: Dataset = Field(description="The training data.")
    method: Method = Field(description="The PEFT method and its parameters.")
    training: Training = Field(default_factory=Training, description="Hyperparameters.")
    resources: Resources = Field(default_factory=Resources, description="Compute and scheduling.")
    queue: Queue | None = Field(default=None, description="Kueue queue; unset means the Job starts at once.")
    output: Output = Field(description="Where the adapter is written.")
    deploy: Deploy | None = Field(default=None, description="Serve the adapter once training succeeds.")
    run_policy: RunPolicy = Field(default_factory=RunPolicy, description="Runtime and retry limits.")


class Phase(StrEnum):
    PENDING = "Pending"
    QUEUED = "Queued"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


class Progress(ApiModel):
    """The trainer's latest report."""

    step: int = Field(default=0, ge=0, description="Optimizer steps done.")
    total_steps: int | None = Field(default=None, ge=0, description="Optimizer steps planned.")
    epoch: float | None = Field(default=None, ge=0, description="Fractional epoch.")
    loss: float | None = Field(default=None, description="Training loss (recent average).")
    eval_loss: float | None = Field(default=None, description="Loss on the validation split.")
    eval_rows: int | None = Field(default=None, ge=0, description="Held-out rows evalLoss is measured on.")
    processes: int | None = Field(
        default=None,
        ge=1,
        description="Training processes of the run that reported (one per GPU, or per pod on CPU, on every node), "
        "each taking gradientAccumulation micro-batches of batchSize rows a step.",
    )
    strategy: Strategy | None = Field(
        default=None,
        description="How the processes shared the work (ddp or fsdp; unset for one process).",
    )
    reward_margin: float | None = Field(
        default=None,
        description="dpo: mean over held-out pairs of beta x (how much more the adapter prefers the chosen answer "
        "over the rejected one than the base model does).",
    )
    reward_accuracy: float | None = Field(
        default=None, ge=0, le=1, description="dpo: share of held-out pairs where that margin is above 0."
    )
    tokens_per_second: float | None = Field(default=None, ge=0, description="Non-padding tokens per second.")
    eta: str | None = Field(default=None, max_length=32, description="Estimated time left, e.g. 12m30s.")
    percent: int | None = Field(default=None, ge=0, le=100, description="step / totalSteps in percent.")


class DatasetReport(ApiModel):
    """What the preflight found in the data before training started."""

    rows: int = Field(default=0, ge=0, description="Rows read.")
    usable_rows: int = Field(default=0, ge=0, description="Rows that can be trained on.")
    tokens: int = Field(default=0, ge=0, description="Tokens in usable rows (after truncation).")
    truncated_fraction: float = Field(default=0.0, ge=0, le=1, description="Share of rows longer than maxSeqLength.")
    duplicates: int = Field(default=0, ge=0, description="Exact duplicate rows.")
    warnings: list[str] = Field(default_factory=list, max_length=64, description="Problems worth a look.")


class AdapterRecord(ApiModel):
    """The trained adapter, as written by the trainer."""

    uri: str = Field(description="Where the adapter directory is.")
    sha256: str = Field(description="sha256 of the adapter's manifest.json, which lists every file's sha256.")
    size_bytes: int = Field(ge=0, description="Total size of the adapter files.")
    base_model: str = Field(description="Base model URI the adapter was trained on.")
    base_model_revision: str | None = Field(default=None, description="Base model revision.")
    method: str = Field(description="PEFT method.")
    rank: int | None = Field(default=None, description="LoRA rank, where the method has one.")
    merged_uri: str | None = Field(default=None, description="The merged full model, when output.merged is set.")


class FineTuneJobStatus(ApiModel):
    """What is: written by the operator only."""

    phase: Phase | None = Field(default=None, description="Summary for kubectl get; conditions are the contract.")
    conditions: list[Condition] = Field(default_factory=list, description="Ready-style conditions.")
    observed_generation: int | None = Field(default=None, description="Generation the status describes.")
    progress: Progress | None = None
    dataset: DatasetReport | None = None
    adapter: AdapterRecord | None = None
    attempts: int = Field(default=0, ge=0, description="Training pods started so far.")
    start_time: datetime | None = None
    completion_time: datetime | None = None
    job_name: str | None = Field(default=None, description="The batch/v1 Job that runs the training.")


class FineTuneJob(ApiModel):
    """A PEFT training run: base model + dataset + method -> adapter."""

    model_config = {"extra": "ignore"}
    # How the API server names this kind: handlers, clients, owner references and the CRD read these.
    KIND: ClassVar[str] = "FineTuneJob"
    PLURAL: ClassVar[str] = "finetunejobs"
    SHORT_NAME: ClassVar[str] = "ftj"
    # The CRD states it at its root (metadata takes no CEL); the model checks it on metadata (`holds` gets it).
    NAME_RULE: ClassVar[Rule] = Rule(
        f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
        f"metadata.name is too long: use at most {MAX_NAME_LENGTH} characters "
        "(the Job and pod labels derived from it must fit in 63)",
        lambda metadata: metadata.name is None or len(metadata.name) <= MAX_NAME_LENGTH,
    )

    api_version: Literal["peft.dev/v1alpha1"] = "peft.dev/v1alpha1"
    kind: Literal["FineTuneJob"] = "FineTuneJob"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: FineTuneJobSpec
    status: FineTuneJobStatus | None = None

    @field_validator("metadata")
    @classmethod
    def _name_fits_job_labels(cls, metadata: ObjectMeta) -> ObjectMeta:
        check(cls.NAME_RULE, metadata)
        return metadata
