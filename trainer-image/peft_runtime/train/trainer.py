"""The training run, top to bottom: setup, data, model, resume, loop (step, log, eval, checkpoint), finish.

Everything comes from the TrainingPlan, read once. No transformers.Trainer: one forward per micro-batch,
a loss summed over the answer tokens only (logits only where there is a target, a chunk at a time), gradient
accumulation normalised by the step's answer tokens (or, for objective dpo, the DPO loss of dpo.py normalised
by the step's pairs), AdamW, warmup then cosine/linear/constant decay.
Each stage is one function below `train`; what a stage hands on is one small object.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import signal
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from peft_operator.api.events import CompletedEvent, PreflightEvent, PreflightPassedEvent, ProgressEvent
from peft_operator.api.finetunejob import (
    AdapterRecord,
    DatasetReport,
    DpoParameters,
    FineTuneJobSpec,
    LrScheduler,
    Objective,
    Progress,
    Strategy,
)
from peft_operator.api.methods import MERGEABLE_METHODS, PROMPT_LEARNING_METHODS, MethodType
from peft_operator.api.plan import TrainingPlan

from .batches import Batch, EpochPlanner, MicroBatch, collate, eval_batches
from .checkpoints import TrainState, latest_checkpoint, load_checkpoint, read_state, save_checkpoint
from .data import Example, check_tokenizer, prepare_dataset, split_examples, why_unusable
from .device import CPU_THREADS_ENV, Placement, apply_cpu_threads, pick_device, placement
from .distributed import Ranks, join_ranks, leave_ranks
from .dpo import PreferenceLoss
from .errors import configuration_error, dataset_invalid, model_unavailable, training_error
from .gradients import GradientCheck
from .loss import AnswerLoss
from .memory import map_large_blocks
from .methods import (
    MethodContext,
    MethodSetup,
    adapter_on_meta_model,
    attach_adapter,
    load_base_model,
    method_setup,
    target_modules,
    trainable_summary,
)
from .output import MERGED_DIR, export_merged, write_adapter
from .progress import Reporter, format_duration
from .sharding import (
    base_weight_bytes,
    choose_strategy,
    device_memory,
    shard_transformer_blocks,
    transformer_blocks,
)
from .stopping import Interrupted, StopRequest, stop_on_signal
from .storage import OutputLocation, dataset_files, model_dir, output_location

log = logging.getLogger(__name__)

MAX_GRAD_NORM = 1.0
LOSS_WINDOW = 10  # steps in the reported "recent" training loss
# Settings that change how a step is computed, not what: a run may resume another's checkpoint across them.
SAME_STEPS_EITHER_WAY = ("strategy", "gradientCheckpointing")


def train(plan: TrainingPlan, reporter: Reporter, *, merge: bool = False) -> CompletedEvent | None:
    """The adapter's completed event (None on the ranks other than 0 of a distributed run)."""
    run = _setup(plan, reporter, merge)
    try:
        checkpoint = latest_checkpoint(run.output)
        saved = read_state(checkpoint) if checkpoint is not None else None
        data = _prepare_data(plan, run, reporter, start=saved, processes=run.ranks.world)
        trainee = _build_trainee(plan.spec, run, data, reporter)
        state = _resume(plan.spec, checkpoint, trainee, data, run.ranks.world, reporter)
        clock = _train_loop(plan.spec, run, data, trainee, state, reporter)
        if data.eval_set and state.eval_loss is None and trainee.evaluates(run.ranks):
            trainee.evaluate(data, plan.spec.training.batch_size, run.device, state)
        return _finish(plan.spec, run, data, trainee, state, clock) if run.ranks.main else None
    finally:
        leave_ranks()


def preflight(plan: TrainingPlan, reporter: Reporter) -> PreflightPassedEvent:
    """What can fail before any GPU is spent (the operator runs this as a CPU-only step before the training
    Job): stage 1, stage 2 (tokenizer, every row; the weights are not fetched) and the adapter attached to
    the base model built on the meta device, which checks the target modules against the real names."""
    run = _setup(plan, reporter, merge=False)
    data = _prepare_data(plan, run, reporter, processes=plan.spec.resources.processes, weights=False)
    setup = method_setup(plan.spec.method, MethodContext(model_dir=data.base_dir, device=torch.device("cpu")))
    model = adapter_on_meta_model(data.base_dir, setup)
    wrapped = target_modules(model, setup)
    attaches = f"wraps {', '.join(wrapped)}" if wrapped else "attaches"
    message = (
        f"{data.report.usable_rows} of {data.report.rows} rows usable, {data.total_steps} steps planned; "
        f"the tokenizer and model config load; {plan.spec.method.type.value} {attaches}. {trainable_summary(model)}"
    )
    if plan.spec.training.strategy is Strategy.FSDP and plan.spec.resources.processes > 1:
        message += f". fsdp shards its {len(transformer_blocks(model))} transformer blocks"
    reporter.note(f"Preflight passed: {message}")
    return PreflightPassedEvent(dataset=data.report, message=message[:2048])


# ------------------------------------------------------------------------ what the stages hand on


@dataclass(frozen=True)
class RunSetup:
    """Decided before any data or model is loaded."""

    work_dir: Path
    device: torch.device
    place: Placement
    output: OutputLocation
    merge: bool
    ranks: Ranks = field(default_factory=Ranks)  # the processes of a distributed run (torchrun)


@dataclass(frozen=True)
class TrainingData:
    base_dir: Path
    report: DatasetReport
    train_set: list[Example]
    eval_set: list[Example]
    planner: EpochPlanner
    total_steps: int
    pad_id: int
    step_span: int  # micro-batches of the plan one optimizer step takes: gradientAccumulation x processes


@dataclass
class Trainee:
    """The model being trained and everything that updates it."""

    base: Any  # the frozen base model (its config goes into the manifest)
    model: Any  # base + adapter
    setup: MethodSetup
    loss_of: AnswerLoss | PreferenceLoss
    parameters: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    autocast: Callable[[], AbstractContextManager[Any]]
    strategy: Strategy | None = None  # how the ranks share the work (None: one process)

    @property
    def sharded(self) -> bool:
        return self.strategy is Strategy.FSDP

    def evaluates(self, ranks: Ranks) -> bool:
        """Rank 0 evaluates; under fsdp every rank does (a sharded block's forward is a collective)."""
        return ranks.main or self.sharded

    def save(self, output: OutputLocation, state: TrainState) -> None:
        save_checkpoint(output, state, self.model, self.optimizer, self.scheduler, self.scaler)

    @torch.no_grad()
    def evaluate(self, data: TrainingData, batch_size: int, device: torch.device, state: TrainState) -> None:
        """The held-out loss (and for dpo the reward margin and accuracy) into `state`."""
        self.model.eval()
        total, tokens = 0.0, 0
        tally = self.loss_of.tally if isinstance(self.loss_of, PreferenceLoss) else None
        if tally is not None:
            tally.reset()
        for micro_batch in eval_batches([len(e) for e in data.eval_set], batch_size):
            batch = collate(data.eval_set, micro_batch, data.pad_id, packed=False).to(device)
            with self.autocast():
                total += float(self.loss_of(batch))
            tokens += batch.loss_tokens
        self.model.train()
        state.eval_loss = round(total / max(tokens, 1), 6)
        if tally is not None:
            state.eval_reward_margin, state.eval_reward_accuracy = tally.margin, tally.accuracy


@dataclass
class SessionClock:
    """This process's share of the run (a resumed run starts a new one): throughput and ETA."""

    started: float = field(default_factory=time.monotonic)
    tokens: int = 0
    steps: int = 0
    step_seconds: float = 0.0
    saved_step: int = 0  # the newest step a checkpoint holds
    batches_in_epoch: int = 0  # micro-batches in the epoch the loop ended in
    processes: int = 1  # ranks of a distributed run
    strategy: Strategy | None = None

    def progress(self, state: TrainState, total_steps: int, batches_in_epoch: int, eval_rows: int) -> Progress:
        per_step = (time.monotonic() - self.started) / self.steps if self.steps else None
        return Progress(
            step=state.step,
            total_steps=total_steps,
            epoch=round(state.epoch + state.next_batch / max(batches_in_epoch, 1), 4),
            loss=round(sum(state.recent_losses) / len(state.recent_losses), 6) if state.recent_losses else None,
            eval_loss=state.eval_loss,
            eval_rows=eval_rows if state.eval_loss is not None else None,
            reward_margin=state.eval_reward_margin,
            reward_accuracy=state.eval_reward_accuracy,
            tokens_per_second=round(self.tokens / self.step_seconds, 1) if self.step_seconds > 0 else None,
            eta=format_duration((total_steps - state.step) * per_step) if per_step is not None else None,
            percent=min(100, int(100 * state.step / total_steps)) if total_steps else None,
            processes=self.processes,
            strategy=self.strategy,
        )


# ---------------------------------------------------------------------------------------- stages


def _setup(plan: TrainingPlan, reporter: Reporter, merge: bool) -> RunSetup:
    """1. What can fail fast, before any data or model is loaded."""
    spec, hp = plan.spec, plan.spec.training
    work_dir = Path(plan.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device()
    place = placement(hp.precision, device)
    if device.type == "cpu":
        map_large_blocks()  # CPU tensors live in malloc's heap: do not let freed ones stay resident
        reporter.note(f"Training on CPU with {apply_cpu_threads()} threads (${CPU_THREADS_ENV} sets them)")
    if hp.packing and spec.method.type in PROMPT_LEARNING_METHODS:
        raise configuration_error(
            f"packing does not work with method {spec.method.type.value} (peft ignores position ids for it); "
            "set training.packing to false"
        )
    merge = merge or spec.output.merged
    if merge and spec.method.type not in MERGEABLE_METHODS:
        raise configuration_error(
            f"a merged model can be exported for lora, dora, qlora and ia3, not {spec.method.type.value}"
        )
    output = output_location(spec.output.uri, plan.mounts, work_dir)
    output.check_writable()
    random.seed(hp.seed)
    torch.manual_seed(hp.seed)
    ranks = join_ranks(device)
    if ranks.world > 1:
        reporter.note(f"Rank {ranks.rank} of {ranks.world}: batchSize {hp.batch_size} rows per process")
    return RunSetup(work_dir, device, place, output, merge, ranks)


def _prepare_data(
    plan: TrainingPlan,
    run: RunSetup,
    reporter: Reporter,
    *,
    processes: int,
    start: TrainState | None = None,
    weights: bool = True,
) -> TrainingData:
    """2. Tokenizer, rows, preflight (reported even when it refuses the data), split, step count (from
    `start`, a checkpoint's state, when resuming: it may have been written by another number of processes)."""
    spec, hp = plan.spec, plan.spec.training
    reporter.note(f"Fetching base model {spec.base_model.uri} and reading dataset {spec.dataset.uri}")
    base_dir = model_dir(spec.base_model.uri, spec.base_model.revision, plan.mounts, run.work_dir, weights=weights)
    tokenizer = _load_tokenizer(base_dir)
    check_tokenizer(tokenizer, spec.dataset.format)
    files = dataset_files(spec.dataset.uri, plan.mounts, run.work_dir)
    dataset = prepare_dataset(files, spec.dataset.format, tokenizer, hp.max_seq_length)
    reporter.emit(PreflightEvent(dataset=dataset.report))
    if dataset.format_problem is not None:
        raise dataset_invalid(dataset.format_problem)
    if dataset.report.usable_rows == 0:
        raise dataset_invalid(why_unusable(dataset.report))
    train_set, eval_set = split_examples(dataset.examples, spec.dataset.validation_split, hp.seed)
    # The plan's micro-batches are batchSize rows, whatever the number of processes: a step takes
    # gradientAccumulation of them per process, so a checkpoint's place in the plan means the same rows to a
    # run with another number of processes.
    planner = EpochPlanner([len(e) for e in train_set], hp.batch_size, hp.seed, hp.packing, hp.max_seq_length)
    span = hp.gradient_accumulation * processes
    total_steps = hp.max_steps or _steps_to_last_epoch(planner, span, hp.epochs or 3, start or TrainState(""))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    return TrainingData(base_dir, dataset.report, train_set, eval_set, planner, total_steps, pad_id, span)


def _steps_to_last_epoch(planner: EpochPlanner, span: int, epochs: int, start: TrainState) -> int:
    """The step that ends the last epoch, counted from `start` at `span` micro-batches a step."""
    remaining = [len(planner.epoch(e)) for e in range(start.epoch, epochs)]
    if remaining:
        remaining[0] -= start.next_batch
    return start.step + sum(math.ceil(max(batches, 0) / span) for batches in remaining)


def _build_trainee(spec: FineTuneJobSpec, run: RunSetup, data: TrainingData, reporter: Reporter) -> Trainee:
    """3. The frozen base (4-bit for qlora), the adapter (the base sharded across the ranks under fsdp), the
    optimizer and the LR schedule."""
    hp = spec.training
    quantized = spec.method.type is MethodType.QLORA
    strategy = choose_strategy(
        hp.strategy, run.ranks.world, base_weight_bytes(data.base_dir, quantized), device_memory(run.device)
    )
    sharded = strategy is Strategy.FSDP
    context = MethodContext(data.base_dir, run.device, quant_storage=run.place.dtype if sharded else torch.uint8)
    setup = method_setup(spec.method, context)
    if hp.gradient_checkpointing is not None:
        setup = replace(setup, gradient_checkpointing=hp.gradient_checkpointing)
    recomputed = " (gradient checkpointing)" if setup.gradient_checkpointing else ""
    reporter.note(
        f"Loading the base model{' in 4 bits' if setup.quantization else ''} and adding the adapter{recomputed}"
    )
    # fsdp on GPUs: into host memory, so that no GPU holds the whole base (4-bit weights quantize on the GPU)
    load_on = torch.device("cpu") if sharded and not quantized else run.device
    try:
        base = load_base_model(data.base_dir, setup, run.place.dtype, load_on)
    except Exception as error:
        raise model_unavailable(f"cannot load base model {spec.base_model.uri}: {error}") from error
    model = attach_adapter(base, setup)
    reporter.note(trainable_summary(model))
    if sharded:
        reporter.note(shard_transformer_blocks(model, run.ranks, run.device).summary(run.ranks))
    elif strategy is Strategy.DDP:
        reporter.note(f"ddp ({hp.strategy.value}): every process holds the whole base model")
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=hp.learning_rate_value, weight_decay=0.0)
    schedule = learning_rate_factor(hp.lr_scheduler, hp.warmup_steps, data.total_steps)
    autocast_dtype, device_type = run.place.autocast, run.device.type
    return Trainee(
        base=base,
        model=model,
        setup=setup,
        loss_of=_loss(spec, model, setup),
        parameters=parameters,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
        scaler=torch.amp.GradScaler(device_type) if run.place.needs_grad_scaler else None,
        autocast=(lambda: torch.autocast(device_type, dtype=autocast_dtype)) if autocast_dtype else nullcontext,
        strategy=strategy,
    )


def _resume(
    spec: FineTuneJobSpec,
    checkpoint: Path | None,
    trainee: Trainee,
    data: TrainingData,
    processes: int,
    reporter: Reporter,
) -> TrainState:
    """4. The newest complete checkpoint of this same job, if there is one."""
    state = TrainState(fingerprint=_fingerprint(spec), processes=processes)
    if checkpoint is None:
        return state
    if read_state(checkpoint).fingerprint != state.fingerprint:
        raise configuration_error(
            f"{spec.output.uri} holds checkpoints of a different job (base model, data, method or "
            "training changed); use a new output URI or delete its checkpoints/"
        )
    state = load_checkpoint(checkpoint, trainee.model, trainee.optimizer, trainee.scheduler, trainee.scaler)
    reporter.note(f"Resuming from {checkpoint.name} (step {state.step} of {data.total_steps})")
    if state.processes != processes:
        rows = spec.training.batch_size * data.step_span
        reporter.note(
            f"{checkpoint.name} was written by {state.processes} processes, this run has {processes}: "
            f"from step {state.step + 1} a step takes {rows} rows (batchSize x gradientAccumulation x processes); "
            "the data order goes on where it stopped"
        )
        state.processes = processes
    return state


def _train_loop(
    spec: FineTuneJobSpec, run: RunSetup, data: TrainingData, trainee: Trainee, state: TrainState, reporter: Reporter
) -> SessionClock:
    """5. One optimizer step per `gradientAccumulation` micro-batches, until the last step or a stop signal."""
    hp = spec.training
    eval_every = hp.eval_every or hp.checkpoint_every
    micro_batches = data.planner.epoch(state.epoch)
    clock = SessionClock(saved_step=state.step, processes=run.ranks.world, strategy=trainee.strategy)
    gradient_check = GradientCheck(trainee.model, check_finite=trainee.scaler is None)
    trainee.model.train()
    ranks = run.ranks
    with stop_on_signal() as stop:
        while state.step < data.total_steps and not ranks.any(stop.requested):
            started = time.monotonic()
            group = micro_batches[state.next_batch : state.next_batch + data.step_span]
            share, idle = _rank_share(group, ranks, lockstep=trainee.sharded)
            batches = [collate(data.train_set, mb, data.pad_id, hp.packing).to(run.device) for mb in share + idle]
            result = _optimizer_step(trainee, batches, len(share), stop, gradient_check, state.step + 1, ranks)
            if result is None:  # stopped mid-step: its micro-batches run again after the resume
                break
            step_loss, lr = result
            step_tokens = int(ranks.total(sum(b.tokens for b in batches[: len(share)])))
            _advance(state, group, step_tokens, step_loss)
            if state.next_batch >= len(micro_batches):  # epoch done: the next one has its own seeded order
                state.epoch, state.next_batch = state.epoch + 1, 0
                micro_batches = data.planner.epoch(state.epoch)
            clock.tokens += step_tokens
            clock.steps += 1
            clock.step_seconds += time.monotonic() - started

            final = state.step == data.total_steps
            if trainee.evaluates(ranks) and data.eval_set and (state.step % eval_every == 0 or final):
                trainee.evaluate(data, hp.batch_size, run.device, state)
            progress = clock.progress(state, data.total_steps, len(micro_batches), len(data.eval_set))
            reporter.emit(ProgressEvent(progress=progress, lr=lr))
            if state.step % hp.checkpoint_every == 0 or final:
                if ranks.main:
                    trainee.save(run.output, state)
                clock.saved_step = state.step
    if state.step < data.total_steps:  # a stop signal, on this rank or another
        _checkpoint_and_stop(stop, state, data.total_steps, trainee, run, clock)
    clock.batches_in_epoch = len(micro_batches)
    return clock


def _rank_share(group: list[MicroBatch], ranks: Ranks, *, lockstep: bool) -> tuple[list[MicroBatch], list[MicroBatch]]:
    """This rank's micro-batches of a step's group (gradientAccumulation of them; fewer, or none, at an
    epoch's end), and the idle ones it runs at zero weight so that under fsdp (`lockstep`) every rank runs as
    many forwards and backwards as rank 0, which has the most."""
    share = group[ranks.rank :: ranks.world]
    idle = [group[0]] * (len(group[0 :: ranks.world]) - len(share)) if lockstep else []
    return share, idle


def _optimizer_step(
    trainee: Trainee,
    batches: list[Batch],
    counted: int,
    stop: StopRequest,
    gradient_check: GradientCheck,
    step: int,
    ranks: Ranks,
) -> tuple[float, float] | None:
    """Forward and backward over the step's micro-batches (this rank's share of them: the first `counted`;
    the rest only keep fsdp's collectives in step and weigh nothing), the gradients summed over the ranks,
    then one update: (step loss, its LR), or None when a stop signal arrived before the update (single
    process only: ranks stop together at a step boundary)."""
    stoppable = ranks.world == 1
    loss_tokens = max(ranks.total(sum(b.loss_tokens for b in batches[:counted])), 1)
    loss_sum = 0.0
    for index, batch in enumerate(batches):
        if stoppable and stop.requested:
            break
        with trainee.autocast():
            loss = trainee.loss_of(batch) / loss_tokens
        if index >= counted:
            loss = loss * 0.0
        (trainee.scaler.scale(loss) if trainee.scaler else loss).backward()
        loss_sum += float(loss.detach()) * loss_tokens
    if stoppable and stop.requested:
        trainee.optimizer.zero_grad(set_to_none=True)
        return None
    ranks.sum_gradients(trainee.parameters)
    loss_sum = ranks.total(loss_sum)
    if trainee.scaler:
        trainee.scaler.unscale_(trainee.optimizer)
    gradient_check.observe(step)
    torch.nn.utils.clip_grad_norm_(trainee.parameters, MAX_GRAD_NORM)
    if trainee.scaler:
        trainee.scaler.step(trainee.optimizer)
        trainee.scaler.update()
    else:
        trainee.optimizer.step()
    lr = float(trainee.scheduler.get_last_lr()[0])
    trainee.scheduler.step()
    trainee.optimizer.zero_grad(set_to_none=True)
    step_loss = loss_sum / loss_tokens
    if not math.isfinite(step_loss):
        raise training_error(
            f"the training loss became {step_loss} at step {step}; lower learningRate or use precision fp32/bf16"
        )
    return step_loss, lr


def _advance(state: TrainState, group: list[MicroBatch], tokens: int, step_loss: float) -> None:
    state.step += 1
    state.next_batch += len(group)
    state.tokens_seen += tokens
    state.recent_losses = [*state.recent_losses, step_loss][-LOSS_WINDOW:]


def _checkpoint_and_stop(
    stop: StopRequest, state: TrainState, total_steps: int, trainee: Trainee, run: RunSetup, clock: SessionClock
) -> None:
    """A stop signal: keep the last finished step, then end the process the way the Job expects."""
    if run.ranks.main and state.step > clock.saved_step:
        trainee.save(run.output, state)
    stopped_by = stop.signal or signal.SIGTERM  # another rank's signal stops this one too
    kept = f"checkpoint step-{state.step} holds it" if state.step else "no step had finished yet"
    raise Interrupted(stopped_by, f"stopped by {stopped_by.name} at step {state.step} of {total_steps}; {kept}")


def _finish(
    spec: FineTuneJobSpec, run: RunSetup, data: TrainingData, trainee: Trainee, state: TrainState, clock: SessionClock
) -> CompletedEvent:
    """6. The adapter and its manifest, the merged model if asked, the completed event."""
    progress = clock.progress(state, data.total_steps, clock.batches_in_epoch, len(data.eval_set))
    metrics = {"steps": float(state.step), "tokens": float(state.tokens_seen), "epochs": float(progress.epoch or 0)}
    if progress.loss is not None:
        metrics["loss"] = progress.loss
    if state.eval_loss is not None:
        metrics["evalLoss"] = state.eval_loss
    if state.eval_reward_margin is not None and state.eval_reward_accuracy is not None:
        metrics["evalRewardMargin"], metrics["evalRewardAccuracy"] = (
            state.eval_reward_margin,
            state.eval_reward_accuracy,
        )
    metrics["trainableParameters"] = float(sum(p.numel() for p in trainee.parameters))
    written = write_adapter(
        trainee.model,
        run.output.local_dir,
        spec=spec,
        model_config=trainee.base.config,
        target_modules=target_modules(trainee.model, trainee.setup),
        dataset=data.report,
        metrics=metrics,
    )
    files = list(written.files)
    if run.merge:
        files = export_merged(data.base_dir, run.output.local_dir, run.place.dtype) + files
    run.output.publish(files, marker=files[-1])  # manifest.json last: on S3 it marks the adapter complete
    return CompletedEvent(
        adapter=AdapterRecord(
            uri=spec.output.uri,
            sha256=written.sha256,
            size_bytes=written.size_bytes,
            base_model=spec.base_model.uri,
            base_model_revision=spec.base_model.revision,
            method=spec.method.type.value,
            rank=spec.method.rank,
            merged_uri=f"{spec.output.uri.rstrip('/')}/{MERGED_DIR}" if run.merge else None,
        ),
        progress=progress,
    )


# --------------------------------------------------------------------------------------- helpers


def _load_tokenizer(base_dir: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(base_dir))
    except Exception as error:
        raise model_unavailable(f"cannot load the tokenizer in {base_dir}: {error}") from error


def _loss(spec: FineTuneJobSpec, model: Any, setup: MethodSetup) -> AnswerLoss | PreferenceLoss:
    """The objective: cross-entropy on the answers (sft), or DPO on preference pairs."""
    answers = AnswerLoss(model, setup)
    if spec.training.objective is not Objective.DPO:
        return answers
    return PreferenceLoss(answers, float((spec.training.dpo or DpoParameters()).beta))


def learning_rate_factor(kind: LrScheduler, warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if kind is LrScheduler.CONSTANT:
            return 1.0
        done = (step - warmup) / max(1, total - warmup)
        if kind is LrScheduler.LINEAR:
            return max(0.0, 1.0 - done)
        return 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0)))

    return factor


def _fingerprint(spec: FineTuneJobSpec) -> str:
    """What a checkpoint must match to be resumed: model, data, method and hyperparameters."""
    wire = spec.to_wire()
    relevant = {k: wire.get(k) for k in ("baseModel", "dataset", "method", "training")}
    relevant["training"] = {k: v for k, v in wire["training"].items() if k not in SAME_STEPS_EITHER_WAY}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()
