"""Several trainer processes: torchrun starts 2 ranks on CPU (gloo); with batchSize 4 rows per process they
train on the same global batch of 8 rows as one process with batchSize 4 and gradientAccumulation 2 (the same
micro-batches, taken by two processes instead of one after the other), and the loss of every step and the
trained adapter equal the single process's within a stated tolerance (float summation order differs: the
gradients are summed across ranks). A run stopped with 2 processes and resumed with 1 goes on through the
same data order: every row once per epoch. LoRA dropout is 0 here: with dropout the runs draw different
masks and agree only in distribution."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from peft_operator.api.finetunejob import Strategy
from peft_operator.api.plan import TrainingPlan
from tests.runtime.builders import make_plan, read_events, run_training, varied_chat_rows, without_dropout, write_jsonl
from tests.runtime.test_dpo import preference_rows
from tests.runtime.test_methods import METHODS
from tests.support.adapters import assert_same_adapter
from tests.support.checkpoints import complete_steps

RELATIVE_TOLERANCE = 1e-3
ENV = {**os.environ, "PEFT_CPU_THREADS": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _torchrun(plan: Path) -> list[str]:
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    return [*torchrun, "-m", "peft_runtime.cli", "train", "--plan", str(plan)]


def _two_ranks(plan: TrainingPlan, root: Path) -> subprocess.CompletedProcess[str]:
    """torchrun with 2 ranks on `plan` (written to root/plan.json), to the end; it must succeed."""
    (root / "plan.json").write_text(plan.model_dump_json(by_alias=True))
    result = subprocess.run(_torchrun(root / "plan.json"), env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _assert_same_losses(distributed: list[float], single: list[float], label: str) -> None:
    worst = max(abs(d - s) / abs(s) for d, s in zip(distributed, single, strict=True))
    print(f"{label}: losses 1 process {single}\n  2 ranks {distributed}\nworst relative difference {worst:.2e}")
    assert distributed == pytest.approx(single, rel=RELATIVE_TOLERANCE)


LORA = {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}}


def _plan(
    tiny_model_dir: Path,
    data: Path,
    root: Path,
    accumulation: int,
    method: dict[str, Any] = LORA,
    data_format: str = "chat",
    **training: object,
) -> TrainingPlan:
    return make_plan(
        model_dir=tiny_model_dir,
        dataset_uri=data.as_uri(),
        output_uri=(root / "out").as_uri(),
        work_dir=root,
        method=method,
        data_format=data_format,
        training={
            "maxSteps": 6,
            "batchSize": 4,
            "gradientAccumulation": accumulation,
            "learningRate": "1e-2",
            "checkpointEvery": 3,
            **training,
        },
    )


def test_two_processes_train_like_one_accumulating_both_their_micro_batches(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "chat.jsonl", varied_chat_rows(80))
    single = run_training(_plan(tiny_model_dir, data, tmp_path / "single", accumulation=2))
    assert single.exit_code == 0, single.events[-1]

    plan = _plan(tiny_model_dir, data, tmp_path / "ranks", accumulation=1)
    result = _two_ranks(plan, tmp_path)
    events = read_events(Path(plan.progress.file or ""))
    assert [e["event"] for e in events].count("completed") == 1, "rank 0 alone reports"
    distributed = [e["progress"]["loss"] for e in events if e["event"] == "progress"]
    assert len(distributed) == len(single.losses) == 6
    # Step losses are recent averages; the first one is the first step's loss exactly.
    _assert_same_losses(distributed, single.losses, "ddp")
    assert "Rank 1 of 2: batchSize 4 rows per process" in result.stderr
    assert "ddp (auto): every process holds the whole base model" in result.stderr
    assert events[-1]["progress"]["processes"] == 2 and single.events[-1]["progress"]["processes"] == 1
    assert events[-1]["progress"]["strategy"] == "ddp", "auto is ddp on CPU"
    assert "strategy" not in single.events[-1]["progress"], "one process: no strategy"

    assert_same_adapter(tmp_path / "single" / "out", tmp_path / "ranks" / "out", RELATIVE_TOLERANCE)


def _two_ranks_past_their_first_checkpoint(plan: Any, root: Path) -> subprocess.Popen[str]:
    """torchrun with 2 ranks on `plan` (its output under root/ranks/out), once rank 0 wrote step-3."""
    (root / "plan.json").write_text(plan.model_dump_json(by_alias=True))
    group = subprocess.Popen(_torchrun(root / "plan.json"), env=ENV, stderr=subprocess.PIPE, text=True)
    checkpoint = root / "ranks" / "out" / "checkpoints" / "step-3" / "COMPLETE"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and group.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert checkpoint.exists(), "rank 0 wrote the first checkpoint"
    return group


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.parametrize(("strategy", "resumed_with"), [("ddp", "fsdp"), ("fsdp", "ddp")])
def test_a_killed_rank_stops_the_group_and_the_next_start_resumes_from_the_newest_checkpoint(
    strategy: str, resumed_with: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """What a Job does with a multi-GPU pod whose rank died: torchrun ends the group, the next pod starts
    all ranks again, and they resume from the checkpoint rank 0 wrote, ending where an uninterrupted run
    ends. The restart uses the other strategy (a new FineTuneJob on the same output may): the checkpoint
    loads into the sharded model as into the whole one."""
    data = write_jsonl(tmp_path / "chat.jsonl", varied_chat_rows(80))
    single = run_training(_plan(tiny_model_dir, data, tmp_path / "single", accumulation=2, maxSteps=24))
    assert single.exit_code == 0, single.events[-1]

    plan = _plan(tiny_model_dir, data, tmp_path / "ranks", accumulation=1, maxSteps=24, strategy=strategy)
    first = _two_ranks_past_their_first_checkpoint(plan, tmp_path)
    workers = _children(first.pid)
    assert len(workers) == 2, workers
    os.kill(workers[1], signal.SIGKILL)
    first.communicate(timeout=120)
    assert first.returncode != 0, "one rank's death ends the group"
    newest = max(complete_steps(tmp_path / "ranks" / "out"))
    assert newest < 24, "killed before the end"

    first_run_events = len(read_events(Path(plan.progress.file or "")))  # the file sink appends
    switched = plan.model_copy(deep=True)
    switched.spec.training.strategy = Strategy(resumed_with)
    resumed = _two_ranks(switched, tmp_path)
    assert f"Resuming from step-{newest} (step {newest} of 24)" in resumed.stderr
    events = read_events(Path(plan.progress.file or ""))[first_run_events:]
    steps = [e["progress"]["step"] for e in events if e["event"] == "progress"]
    assert steps == list(range(newest + 1, 25)), "the second start trains only the steps after the checkpoint"
    assert events[-1]["progress"]["strategy"] == resumed_with
    assert_same_adapter(tmp_path / "single" / "out", tmp_path / "ranks" / "out", RELATIVE_TOLERANCE)


def _trained_tokens(out: Path) -> float:
    return float(json.loads((out / "manifest.json").read_text())["metrics"]["tokens"])


def test_a_run_stopped_with_two_processes_resumes_with_one_through_the_same_data_order(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pod or node fewer after a restart: the checkpoint's place in the data means the same rows to one
    process, so the epoch ends after every row was trained on once, as in an uninterrupted run."""
    data = write_jsonl(tmp_path / "chat.jsonl", varied_chat_rows(80))
    epoch = {"maxSteps": None, "epochs": 1}
    single = run_training(_plan(tiny_model_dir, data, tmp_path / "single", accumulation=1, **epoch))
    assert single.exit_code == 0, single.events[-1]
    (completed,) = single.of("completed")

    plan = _plan(tiny_model_dir, data, tmp_path / "ranks", accumulation=1, **epoch)
    group = _two_ranks_past_their_first_checkpoint(plan, tmp_path)
    group.send_signal(signal.SIGTERM)  # torchrun passes it to both ranks, which stop at the same step
    _, stderr = group.communicate(timeout=180)
    assert group.returncode != 0 and "stopped by SIGTERM" in stderr, stderr[-3000:]
    stopped_at = max(complete_steps(tmp_path / "ranks" / "out"))
    total_single = completed["progress"]["totalSteps"]
    assert 2 * stopped_at < total_single, "stopped before the two processes reached the epoch's end"

    capsys.readouterr()
    resumed = run_training(plan)
    assert resumed.exit_code == 0, resumed.events[-1]
    notes = capsys.readouterr().err
    assert f"step-{stopped_at} was written by 2 processes, this run has 1" in notes, notes[-3000:]
    (finished,) = resumed.of("completed")
    steps = [e["progress"]["step"] for e in resumed.of("progress")]
    # The 2-process steps took 2 micro-batches each; one process takes the rest one at a time.
    assert steps == list(range(stopped_at + 1, total_single - stopped_at + 1))
    assert finished["progress"]["epoch"] == completed["progress"]["epoch"] == 1.0
    assert _trained_tokens(tmp_path / "ranks" / "out") == _trained_tokens(tmp_path / "single" / "out"), "every row once"


# Every method on chat rows (sft), and dpo on preference pairs (two forwards a pair, one adapter disabled).
FSDP_CASES = {name: (method, rate, "chat", {}) for name, (method, rate) in METHODS.items()}
FSDP_CASES["lora-dpo"] = (LORA, "1e-2", "preference", {"objective": "dpo"})


@pytest.mark.parametrize("name", sorted(FSDP_CASES))
def test_fsdp_shards_the_base_model_and_trains_like_one_process(
    name: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """training.strategy fsdp with 2 ranks: each holds only part of the base model's transformer blocks
    (qlora's 4-bit weights included), and the run's step losses and adapter equal one process taking the same
    micro-batches. One epoch of 9 micro-batches: the last step has one, so rank 1 runs a zero-weighted
    micro-batch to keep the sharded blocks' collectives in step, and the results still agree."""
    method, learning_rate, data_format, objective = FSDP_CASES[name]
    method = without_dropout(method)
    rows = preference_rows(40, seed=1) if data_format == "preference" else varied_chat_rows(40)
    rows_file = write_jsonl(tmp_path / "rows.jsonl", rows)
    epoch = {"maxSteps": None, "epochs": 1, "learningRate": learning_rate, "checkpointEvery": 2, **objective}
    single = run_training(_plan(tiny_model_dir, rows_file, tmp_path / "single", 2, method, data_format, **epoch))
    assert single.exit_code == 0, single.events[-1]
    (completed,) = single.of("completed")
    assert completed["progress"]["totalSteps"] == 5, "9 micro-batches of 4 rows, 2 a step: the last step has 1"

    plan = _plan(tiny_model_dir, rows_file, tmp_path / "ranks", 1, method, data_format, strategy="fsdp", **epoch)
    result = _two_ranks(plan, tmp_path)
    held = re.search(
        r"fsdp: 2 transformer blocks sharded over 2 processes; rank 1 holds ([\d,]+) of the model's ([\d,]+) parameter bytes",
        result.stderr,
    )
    assert held, result.stderr[-3000:]
    assert int(held[1].replace(",", "")) < int(held[2].replace(",", "")), "rank 1 holds part of the model"
    events = read_events(Path(plan.progress.file or ""))
    progress = [e["progress"] for e in events if e["event"] == "progress"]
    assert progress[-1]["strategy"] == "fsdp" and progress[-1]["processes"] == 2
    print(held[0])
    _assert_same_losses([p["loss"] for p in progress], single.losses, f"fsdp {name}")
    (finished,) = [e for e in events if e["event"] == "completed"]
    assert finished["progress"]["evalLoss"] == pytest.approx(completed["progress"]["evalLoss"], rel=RELATIVE_TOLERANCE)
    assert _trained_tokens(tmp_path / "ranks" / "out") == _trained_tokens(tmp_path / "single" / "out")
    assert_same_adapter(tmp_path / "single" / "out", tmp_path / "ranks" / "out", RELATIVE_TOLERANCE)
