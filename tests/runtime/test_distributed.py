"""Several trainer processes in one pod: torchrun starts 2 ranks on CPU (gloo); with batchSize 4 rows per
process they train on the same global batch of 8 as one process with batchSize 8, and the loss of every
step and the trained adapter equal the single process's within a stated tolerance (float summation order
differs: rows are padded per rank and the gradients summed across ranks). LoRA dropout is 0 here: with
dropout the two runs draw different masks and agree only in distribution."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.runtime.builders import make_plan, read_events, run_training, varied_chat_rows, write_jsonl

RELATIVE_TOLERANCE = 1e-3


def _plan(tiny_model_dir: Path, data: Path, root: Path, batch_size: int):  # type: ignore[no-untyped-def]
    return make_plan(
        model_dir=tiny_model_dir,
        dataset_uri=data.as_uri(),
        output_uri=(root / "out").as_uri(),
        work_dir=root,
        method={"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
        training={"maxSteps": 6, "batchSize": batch_size, "learningRate": "1e-2", "checkpointEvery": 3},
    )


def test_two_processes_with_half_the_batch_each_train_like_one_with_the_whole_batch(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "chat.jsonl", varied_chat_rows(80))
    single = run_training(_plan(tiny_model_dir, data, tmp_path / "single", batch_size=8))
    assert single.exit_code == 0, single.events[-1]

    plan = _plan(tiny_model_dir, data, tmp_path / "ranks", batch_size=4)
    (tmp_path / "plan.json").write_text(plan.model_dump_json(by_alias=True))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    result = subprocess.run(
        [*torchrun, "-m", "peft_runtime.cli", "train", "--plan", str(tmp_path / "plan.json")],
        env={**os.environ, "PEFT_CPU_THREADS": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    events = read_events(Path(plan.progress.file or ""))
    assert [e["event"] for e in events].count("completed") == 1, "rank 0 alone reports"
    distributed = [e["progress"]["loss"] for e in events if e["event"] == "progress"]
    assert len(distributed) == len(single.losses) == 6
    # Step losses are recent averages; the first one is the first step's loss exactly.
    worst = max(abs(d - s) / abs(s) for d, s in zip(distributed, single.losses, strict=True))
    print(f"losses 1 process: {single.losses}\n       2 ranks:   {distributed}\nworst relative difference {worst:.2e}")
    assert distributed == pytest.approx(single.losses, rel=RELATIVE_TOLERANCE)
    assert "Rank 1 of 2: batchSize 4 rows per process" in result.stderr
    assert events[-1]["progress"]["processes"] == 2 and single.events[-1]["progress"]["processes"] == 1

    single_weights = load_file(str(tmp_path / "single" / "out" / "adapter_model.safetensors"))
    ranks_weights = load_file(str(tmp_path / "ranks" / "out" / "adapter_model.safetensors"))
    assert single_weights.keys() == ranks_weights.keys()
    for name, weight in single_weights.items():
        difference = (weight - ranks_weights[name]).abs().max().item()
        assert difference <= RELATIVE_TOLERANCE * max(weight.abs().max().item(), 1e-3), (name, difference)
