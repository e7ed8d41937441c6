"""The training run, top to bottom: setup, data, model, resume, loop (step, log, eval, checkpoint), finish.

Everything comes from the TrainingPlan, read once. No transformers.Trainer: one forward per micro-batch,
a loss summed over the answer tokens only (logits only where there is a target, a chunk at a time), gradient
accumulation normalised by the step's answer tokens, AdamW, warmup then cosine/linear/constant decay.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from peft_operator.api.events import CompletedEvent, PreflightEvent, ProgressEvent
from peft_operator.api.finetunejob import AdapterRecord, FineTuneJobSpec, LrScheduler, Progress
from peft_operator.api.methods import MERGEABLE_METHODS
from peft_operator.api.plan import TrainingPlan

from .batches import EpochPlanner, collate, eval_batches
from .checkpoints import TrainState, latest_checkpoint, load_checkpoint, read_state, save_checkpoint
from .data import Example, check_tokenizer, prepare_dataset, split_examples, why_unusable
from .device import CPU_THREADS_ENV, apply_cpu_threads, pick_device, placement
from .errors import configuration_error, dataset_invalid, model_unavailable, training_error
from .gradients import GradientCheck
from .loss import AnswerLoss
from .memory import map_large_blocks
from .methods import (
    PROMPT_LEARNING,
    MethodContext,
    attach_adapter,
    load_base_model,
    method_setup,
    target_modules,
    trainable_summary,
)
from .output import MERGED_DIR, export_merged, write_adapter
from .progress import Reporter, format_duration
from .stopping import Interrupted, stop_on_signal
from .storage import dataset_files, model_dir, output_location

log = logging.getLogger(__name__)

MAX_GRAD_NORM = 1.0
LOSS_WINDOW = 10  # steps in the reported "recent" training loss


def train(plan: TrainingPlan, reporter: Reporter, *, merge: bool = False) -> CompletedEvent:
    spec, hp = plan.spec, plan.spec.training
    work_dir = Path(plan.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)

    # 1. Setup that can fail fast, before any data or model is loaded.
    device = pick_device()
    place = placement(hp.precision, device)
    if device.type == "cpu":
        map_large_blocks()  # CPU tensors live in malloc's heap: do not let freed ones stay resident
        reporter.note(f"Training on CPU with {apply_cpu_threads()} threads (${CPU_THREADS_ENV} sets them)")
    if hp.packing and spec.method.type in PROMPT_LEARNING:
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

    # 2. Data: tokenizer, rows, preflight, split.
    reporter.note(f"Fetching base model {spec.base_model.uri} and reading dataset {spec.dataset.uri}")
    base_dir = model_dir(spec.base_model.uri, spec.base_model.revision, plan.mounts, work_dir)
    tokenizer = _load_tokenizer(base_dir)
    check_tokenizer(tokenizer, spec.dataset.format)
    dataset = prepare_dataset(
        dataset_files(spec.dataset.uri, plan.mounts, work_dir), spec.dataset.format, tokenizer, hp.max_seq_length
    )
    reporter.emit(PreflightEvent(dataset=dataset.report))
    if dataset.format_problem is not None:
        raise dataset_invalid(dataset.format_problem)
    if dataset.report.usable_rows == 0:
        raise dataset_invalid(why_unusable(dataset.report))
    train_set, eval_set = split_examples(dataset.examples, spec.dataset.validation_split, hp.seed)
    planner = EpochPlanner([len(e) for e in train_set], hp.batch_size, hp.seed, hp.packing, hp.max_seq_length)
    total_steps = hp.max_steps or sum(
        math.ceil(len(planner.epoch(e)) / hp.gradient_accumulation) for e in range(hp.epochs or 3)
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    # 3. Model: the frozen base (4-bit for qlora), the adapter, the optimizer and the LR schedule.
    setup = method_setup(spec.method, MethodContext(model_dir=base_dir, device=device))
    reporter.note(f"Loading the base model{' in 4 bits' if setup.quantization else ''} and adding the adapter")
    try:
        base = load_base_model(base_dir, setup, place.dtype, device)
    except Exception as error:
        raise model_unavailable(f"cannot load base model {spec.base_model.uri}: {error}") from error
    model = attach_adapter(base, setup)
    reporter.note(trainable_summary(model))
    loss_of = AnswerLoss(model, setup)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=hp.learning_rate_value, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(hp.lr_scheduler, hp.warmup_steps, total_steps))
    scaler = torch.amp.GradScaler(device.type) if place.needs_grad_scaler else None
    autocast = (
        (lambda: torch.autocast(device.type, dtype=place.autocast)) if place.autocast is not None else nullcontext
    )

    # 4. Resume from the newest complete checkpoint, if there is one.
    state = TrainState(fingerprint=_fingerprint(spec))
    checkpoint = latest_checkpoint(output)
    if checkpoint is not None:
        if read_state(checkpoint).fingerprint != state.fingerprint:
            raise configuration_error(
                f"{spec.output.uri} holds checkpoints of a different job (base model, data, method or "
                "training changed); use a new output URI or delete its checkpoints/"
            )
        state = load_checkpoint(checkpoint, model, optimizer, scheduler, scaler)
        reporter.note(f"Resuming from {checkpoint.name} (step {state.step} of {total_steps})")

    # 5. The loop: one optimizer step per `gradientAccumulation` micro-batches.
    eval_every = hp.eval_every or hp.checkpoint_every
    micro_batches = planner.epoch(state.epoch)
    session_tokens, session_steps, step_seconds, loop_start = 0, 0, 0.0, time.monotonic()
    model.train()
    gradient_check = GradientCheck(model, check_finite=scaler is None)
    saved_step = state.step
    with stop_on_signal() as stop:
        while state.step < total_steps and not stop.requested:
            started = time.monotonic()
            group = micro_batches[state.next_batch : state.next_batch + hp.gradient_accumulation]
            batches = [collate(train_set, mb, pad_id, hp.packing).to(device) for mb in group]
            step_loss_tokens = sum(b.loss_tokens for b in batches)
            loss_sum = 0.0
            for batch in batches:
                if stop.requested:
                    break
                with autocast():
                    loss = loss_of(batch) / max(step_loss_tokens, 1)
                (scaler.scale(loss) if scaler else loss).backward()
                loss_sum += float(loss.detach()) * max(step_loss_tokens, 1)
            if stop.requested:  # drop the unfinished step: its micro-batches run again after the resume
                optimizer.zero_grad(set_to_none=True)
                break
            if scaler:
                scaler.unscale_(optimizer)
            gradient_check.observe(state.step + 1)
            torch.nn.utils.clip_grad_norm_(parameters, MAX_GRAD_NORM)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            step_loss = loss_sum / max(step_loss_tokens, 1)
            if not math.isfinite(step_loss):
                raise training_error(
                    f"the training loss became {step_loss} at step {state.step + 1}; lower learningRate "
                    "or use precision fp32/bf16"
                )
            state.step += 1
            state.next_batch += len(group)
            state.tokens_seen += sum(b.tokens for b in batches)
            state.recent_losses = [*state.recent_losses, step_loss][-LOSS_WINDOW:]
            if state.next_batch >= len(micro_batches):  # epoch done: the next one has its own seeded order
                state.epoch, state.next_batch = state.epoch + 1, 0
                micro_batches = planner.epoch(state.epoch)
            session_tokens += sum(b.tokens for b in batches)
            session_steps += 1
            step_seconds += time.monotonic() - started

            final = state.step == total_steps
            if eval_set and (state.step % eval_every == 0 or final):
                state.eval_loss = _evaluate(model, loss_of, eval_set, hp.batch_size, pad_id, device, autocast)
            progress = _progress(
                state, total_steps, len(micro_batches), session_tokens, step_seconds, session_steps, loop_start
            )
            reporter.emit(ProgressEvent(progress=progress, lr=lr))
            if state.step % hp.checkpoint_every == 0 or final:
                save_checkpoint(output, state, model, optimizer, scheduler, scaler)
                saved_step = state.step
    if stop.requested and state.step < total_steps:
        if state.step > saved_step:
            save_checkpoint(output, state, model, optimizer, scheduler, scaler)
        assert stop.signal is not None
        kept = f"checkpoint step-{state.step} holds it" if state.step else "no step had finished yet"
        raise Interrupted(stop.signal, f"stopped by {stop.signal.name} at step {state.step} of {total_steps}; {kept}")

    # 6. Finish: the adapter and its manifest, the merged model if asked, the completed event.
    if eval_set and state.eval_loss is None:
        state.eval_loss = _evaluate(model, loss_of, eval_set, hp.batch_size, pad_id, device, autocast)
    progress = _progress(
        state, total_steps, len(micro_batches), session_tokens, step_seconds, session_steps, loop_start
    )
    metrics = {"steps": float(state.step), "tokens": float(state.tokens_seen), "epochs": float(progress.epoch or 0)}
    if progress.loss is not None:
        metrics["loss"] = progress.loss
    if state.eval_loss is not None:
        metrics["evalLoss"] = state.eval_loss
    metrics["trainableParameters"] = float(sum(p.numel() for p in parameters))
    written = write_adapter(
        model,
        output.local_dir,
        spec=spec,
        model_config=base.config,
        target_modules=target_modules(model, setup),
        dataset=dataset.report,
        metrics=metrics,
    )
    files = list(written.files)
    if merge:
        files = export_merged(base_dir, output.local_dir, place.dtype) + files
    output.publish(files, marker=files[-1])  # manifest.json last: on S3 it marks the adapter complete
    return CompletedEvent(
        adapter=AdapterRecord(
            uri=spec.output.uri,
            sha256=written.sha256,
            size_bytes=written.size_bytes,
            base_model=spec.base_model.uri,
            base_model_revision=spec.base_model.revision,
            method=spec.method.type.value,
            rank=spec.method.rank,
            merged_uri=f"{spec.output.uri.rstrip('/')}/{MERGED_DIR}" if merge else None,
        ),
        progress=progress,
    )


def _load_tokenizer(base_dir: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(base_dir))
    except Exception as error:
        raise model_unavailable(f"cannot load the tokenizer in {base_dir}: {error}") from error


@torch.no_grad()
def _evaluate(
    model: Any, loss_of: AnswerLoss, examples: list[Example], batch_size: int, pad_id: int, device: Any, autocast: Any
) -> float:
    model.eval()
    total, tokens = 0.0, 0
    for micro_batch in eval_batches([len(e) for e in examples], batch_size):
        batch = collate(examples, micro_batch, pad_id, packed=False).to(device)
        with autocast():
            total += float(loss_of(batch))
        tokens += batch.loss_tokens
    model.train()
    return round(total / max(tokens, 1), 6)


def _lr_lambda(kind: LrScheduler, warmup: int, total: int) -> Any:
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


def _progress(
    state: TrainState,
    total_steps: int,
    batches_in_epoch: int,
    session_tokens: int,
    step_seconds: float,
    session_steps: int,
    loop_start: float,
) -> Progress:
    elapsed = time.monotonic() - loop_start
    per_step = elapsed / session_steps if session_steps else None
    return Progress(
        step=state.step,
        total_steps=total_steps,
        epoch=round(state.epoch + state.next_batch / max(batches_in_epoch, 1), 4),
        loss=round(sum(state.recent_losses) / len(state.recent_losses), 6) if state.recent_losses else None,
        eval_loss=state.eval_loss,
        tokens_per_second=round(session_tokens / step_seconds, 1) if step_seconds > 0 else None,
        eta=format_duration((total_steps - state.step) * per_step) if per_step is not None else None,
        percent=min(100, int(100 * state.step / total_steps)) if total_steps else None,
    )


def _fingerprint(spec: FineTuneJobSpec) -> str:
    """What a checkpoint must match to be resumed: model, data, method and hyperparameters."""
    wire = spec.to_wire()
    relevant = {k: wire.get(k) for k in ("baseModel", "dataset", "method", "training")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()
