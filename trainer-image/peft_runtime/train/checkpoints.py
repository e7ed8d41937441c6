"""Resumable checkpoints: `<output>/checkpoints/step-<N>/`, complete only when its marker file exists.

A checkpoint is written into a hidden temporary folder, flushed to disk, marked complete, then renamed to
`step-<N>`; so a kill at any moment leaves either a complete checkpoint or one that is ignored. It holds
the trainable weights, the optimizer, the LR schedule, the RNG states and the data position (epoch, next
micro-batch), plus a fingerprint of the job so that a different job never resumes from it. An s3:// output
uploads the files and then the marker object; resuming downloads the newest complete one.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .storage import OutputLocation

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
MARKER = "COMPLETE"
KEEP = 3  # newest complete checkpoints kept; older ones are deleted
_NAME = re.compile(r"^step-(\d+)$")


@dataclass
class TrainState:
    """Where training is: everything besides tensors that a resumed run needs."""

    fingerprint: str
    step: int = 0
    epoch: int = 0
    next_batch: int = 0  # index of the next micro-batch in the epoch's plan
    processes: int = 1  # of the run that wrote it: a resumed run may have another number
    tokens_seen: int = 0
    recent_losses: list[float] = field(default_factory=list)
    eval_loss: float | None = None
    eval_reward_margin: float | None = None  # objective dpo (see dpo.RewardTally)
    eval_reward_accuracy: float | None = None


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    output: OutputLocation, state: TrainState, model: torch.nn.Module, optimizer: Any, scheduler: Any, scaler: Any
) -> Path:
    name = f"step-{state.step}"
    root = output.local_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    partial = root / f".{name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    save_file(trainable_state(model), str(partial / "adapter_weights.safetensors"))
    torch.save(optimizer.state_dict(), partial / "optimizer.pt")
    torch.save(
        {
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": _rng_state(),
        },
        partial / "trainer_state.pt",
    )
    (partial / "trainer_state.json").write_text(json.dumps(asdict(state), indent=2) + "\n")
    files = sorted(p.name for p in partial.iterdir())
    for file in files:
        _fsync(partial / file)
    (partial / MARKER).write_text(json.dumps({"step": state.step, "files": files}) + "\n")
    _fsync(partial / MARKER)
    final = root / name
    if final.exists():  # a leftover without marker (or an older copy of the same step)
        shutil.rmtree(final)
    os.rename(partial, final)
    _fsync(root)
    output.publish([f"{CHECKPOINTS}/{name}/{f}" for f in [*files, MARKER]], marker=f"{CHECKPOINTS}/{name}/{MARKER}")
    _prune(output)
    return final


def _complete_steps(output: OutputLocation) -> tuple[set[int], set[int]]:
    """(local, remote) steps of complete checkpoints; logs the incomplete local ones it skips."""
    root = output.local_dir / CHECKPOINTS
    local = set()
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        if match := _NAME.match(entry.name):
            if (entry / MARKER).is_file():
                local.add(int(match[1]))
            else:
                log.warning("Ignoring incomplete checkpoint %s (no %s marker)", entry, MARKER)
    remote = {
        int(match[1])
        for name in output.remote_dirs(CHECKPOINTS)
        if (match := _NAME.match(name)) and output.has_remote(f"{CHECKPOINTS}/{name}/{MARKER}")
    }
    return local, remote


def _prune(output: OutputLocation) -> None:
    local, remote = _complete_steps(output)
    for step in sorted(local | remote)[:-KEEP]:
        output.delete(f"{CHECKPOINTS}/step-{step}", marker=MARKER)


def _remove_interrupted(output: OutputLocation) -> None:
    """Folders a killed run left half-written (`.step-N.partial-PID`): never resumable, only disk taken."""
    root = output.local_dir / CHECKPOINTS
    for leftover in sorted(root.glob(".step-*.partial-*")) if root.is_dir() else []:
        log.info("Removing %s, left by an interrupted checkpoint", leftover)
        shutil.rmtree(leftover, ignore_errors=True)


def latest_checkpoint(output: OutputLocation) -> Path | None:
    """The newest complete checkpoint, local or remote (then downloaded); partial ones are skipped and
    interrupted writes removed (called once, at the start of a run)."""
    _remove_interrupted(output)
    local, remote = _complete_steps(output)
    if not local and not remote:
        return None
    step = max(local | remote)
    path = output.local_dir / CHECKPOINTS / f"step-{step}"
    if step not in local:
        shutil.rmtree(path, ignore_errors=True)
        output.fetch(f"{CHECKPOINTS}/step-{step}")
        if not (path / MARKER).is_file():
            return None
    return path


def read_state(path: Path) -> TrainState:
    return TrainState(**json.loads((path / "trainer_state.json").read_text()))


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any, scaler: Any) -> TrainState:
    weights = load_file(str(path / "adapter_weights.safetensors"))
    parameters = dict(model.named_parameters())
    missing = [n for n, p in parameters.items() if p.requires_grad and n not in weights]
    unknown = [n for n in weights if n not in parameters]
    if missing or unknown:
        raise ValueError(f"checkpoint {path} does not fit this model (missing {missing[:3]}, unknown {unknown[:3]})")
    with torch.no_grad():
        for name, tensor in weights.items():
            parameters[name].copy_(tensor)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    extra = torch.load(path / "trainer_state.pt", weights_only=True)
    scheduler.load_state_dict(extra["scheduler"])
    if scaler is not None and extra["scaler"] is not None:
        scaler.load_state_dict(extra["scaler"])
    _set_rng_state(extra["rng"])
    return read_state(path)
