"""Checkpoints and resume: a killed run continues from its newest complete checkpoint, exactly."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peft_operator.api.events import STOPPED_BY_SIGNAL_EXIT_CODES
from tests.runtime.builders import chat_rows, make_plan, run_training, write_jsonl
from tests.support.checkpoints import complete_steps

ROOT = Path(__file__).resolve().parents[2]


def _train_command(plan_path: Path) -> list[str]:
    return [sys.executable, "-m", "peft_runtime.cli", "train", "--plan", str(plan_path)]


def _progress_steps(stdout: str) -> list[int]:
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return [e["progress"]["step"] for e in events if e["event"] == "progress"]


UNBUFFERED = {**os.environ, "PYTHONUNBUFFERED": "1"}  # progress lines arrive as the steps end


def _write_plan(model_dir: Path, tmp_path: Path, *, max_steps: int, checkpoint_every: int) -> tuple[Path, Path]:
    """A plan file for a long run on 240 chat rows, and its output folder."""
    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(240))
    output = tmp_path / "out"
    plan = make_plan(
        model_dir=model_dir,
        dataset_uri=data.as_uri(),
        output_uri=output.as_uri(),
        work_dir=tmp_path / "work",
        training={"maxSteps": max_steps, "batchSize": 4, "checkpointEvery": checkpoint_every},
        validation_split=0.0,
    )
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(plan.model_dump_json(by_alias=True))
    return plan_path, output


def test_kill_9_mid_run_resumes_from_the_newest_complete_checkpoint(tiny_model_dir: Path, tmp_path: Path) -> None:
    plan_path, output = _write_plan(tiny_model_dir, tmp_path, max_steps=240, checkpoint_every=25)

    first = subprocess.Popen(
        _train_command(plan_path),
        cwd=ROOT,
        env=UNBUFFERED,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    seen: list[int] = []
    assert first.stdout is not None
    deadline = time.monotonic() + 240
    for line in first.stdout:
        seen += _progress_steps(line)
        if seen and seen[-1] >= 60 and 50 in complete_steps(output):
            os.kill(first.pid, signal.SIGKILL)
            break
        assert time.monotonic() < deadline, "the first run did not reach step 60 in time"
    first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL, "the run ended before it could be killed; make it longer"
    assert seen[-1] < 240
    newest = max(complete_steps(output))
    assert newest >= 50

    # A checkpoint that was being written when the process died: newer, but without its marker.
    partial = output / "checkpoints" / "step-9999"
    partial.mkdir()
    (partial / "adapter_weights.safetensors").write_bytes(b"half-written")
    # And the hidden folder a write in progress uses: removed at the next start, never resumed.
    interrupted = output / "checkpoints" / ".step-75.partial-4242"
    interrupted.mkdir()
    (interrupted / "optimizer.pt").write_bytes(b"half-written")

    second = subprocess.run(
        _train_command(plan_path), cwd=ROOT, env=UNBUFFERED, capture_output=True, text=True, timeout=300, check=False
    )
    assert second.returncode == 0, second.stderr[-2000:]
    steps = _progress_steps(second.stdout)
    assert steps[0] == newest + 1, f"resumed at {steps[0]}, the newest complete checkpoint is step {newest}"
    assert steps == list(range(newest + 1, 241))  # nothing before the checkpoint is redone, nothing skipped
    assert f"Resuming from step-{newest}" in second.stderr
    assert "Ignoring incomplete checkpoint" in second.stderr and "step-9999" in second.stderr
    assert not interrupted.exists() and ".step-75.partial-4242" in second.stderr
    completed = next(json.loads(x) for x in second.stdout.splitlines() if '"completed"' in x)
    assert completed["progress"]["step"] == completed["progress"]["totalSteps"] == 240
    assert (output / "manifest.json").is_file()


def test_sigterm_checkpoints_the_current_step_and_the_restart_continues_from_it(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """What a pod sees on deletion, Kueue preemption or a node drain: SIGTERM, then a new pod."""
    plan_path, output = _write_plan(tiny_model_dir, tmp_path, max_steps=120, checkpoint_every=100)

    first = subprocess.Popen(
        _train_command(plan_path), cwd=ROOT, env=UNBUFFERED, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert first.stdout is not None and first.stderr is not None
    seen: list[int] = []
    for line in first.stdout:
        seen += _progress_steps(line)
        if seen and seen[-1] >= 30:
            first.send_signal(signal.SIGTERM)
            break
    rest, stderr = first.communicate(timeout=60)
    seen += _progress_steps(rest)
    assert first.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert STOPPED_BY_SIGNAL_EXIT_CODES[first.returncode] == "SIGTERM"  # what the operator reads as Resuming
    stopped_at = seen[-1]
    assert 30 <= stopped_at < 100, "stopped before the first periodic checkpoint (step 100)"
    assert complete_steps(output) == [stopped_at]
    assert f"stopped by SIGTERM at step {stopped_at} of 120; checkpoint step-{stopped_at} holds it" in stderr
    assert '"failed"' not in rest, "a stop on request is not a failure"

    second = subprocess.run(
        _train_command(plan_path), cwd=ROOT, env=UNBUFFERED, capture_output=True, text=True, timeout=300, check=False
    )
    assert second.returncode == 0, second.stderr[-2000:]
    assert _progress_steps(second.stdout) == list(range(stopped_at + 1, 121))
    assert (output / "manifest.json").is_file()


def test_resumed_run_ends_with_the_same_adapter_as_an_uninterrupted_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(120))
    training = {"maxSteps": 30, "checkpointEvery": 10, "gradientAccumulation": 2, "warmupSteps": 3}

    def plan_for(name: str):  # type: ignore[no-untyped-def]
        return make_plan(
            model_dir=tiny_model_dir,
            dataset_uri=data.as_uri(),
            output_uri=(tmp_path / name).as_uri(),
            work_dir=tmp_path / f"work-{name}",
            training=training,
            method={"type": "lora", "lora": {"r": 8, "dropout": 0.1}},  # dropout: the RNG state must resume too
        )

    whole = run_training(plan_for("whole"))
    assert whole.exit_code == 0
    # Pretend the second run died after step 10: only that checkpoint exists.
    shutil.copytree(tmp_path / "whole" / "checkpoints" / "step-10", tmp_path / "resumed" / "checkpoints" / "step-10")
    resumed = run_training(plan_for("resumed"))
    assert resumed.exit_code == 0
    assert resumed.steps == list(range(11, 31))
    assert resumed.losses[-1] == pytest.approx(whole.losses[-1], abs=1e-6)
    expected = load_file(str(tmp_path / "whole" / "adapter_model.safetensors"))
    actual = load_file(str(tmp_path / "resumed" / "adapter_model.safetensors"))
    assert expected.keys() == actual.keys()
    for name in expected:
        assert (expected[name] - actual[name]).abs().max() < 1e-6, name


def test_checkpoints_of_a_different_job_are_not_resumed(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(60))
    common = {"model_dir": tiny_model_dir, "dataset_uri": data.as_uri(), "output_uri": (tmp_path / "out").as_uri()}
    first = run_training(make_plan(**common, work_dir=tmp_path / "w1", training={"maxSteps": 10}))
    assert first.exit_code == 0
    other = run_training(
        make_plan(**common, work_dir=tmp_path / "w2", training={"maxSteps": 10, "learningRate": "1e-3"})
    )
    assert other.exit_code == 3
    failed = other.of("failed")[0]
    assert failed["reason"] == "ConfigurationError"
    assert "holds checkpoints of a different job" in failed["message"]


def test_only_the_newest_three_complete_checkpoints_are_kept(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(60))
    output = tmp_path / "out"
    plan = make_plan(
        model_dir=tiny_model_dir,
        dataset_uri=data.as_uri(),
        output_uri=output.as_uri(),
        work_dir=tmp_path / "w",
        training={"maxSteps": 25, "checkpointEvery": 5},
    )
    assert run_training(plan).exit_code == 0
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["step-15", "step-20", "step-25"]
    for step in (15, 20, 25):
        files = set(os.listdir(output / "checkpoints" / f"step-{step}"))
        assert {"COMPLETE", "adapter_weights.safetensors", "optimizer.pt", "trainer_state.pt"} <= files
