"""Several trainer processes vs one, and what the CPU preflight step costs, in one run.

    .venv/bin/python bench/distributed_throughput.py                 # the tiny test Llama (a minute)
    .venv/bin/python bench/distributed_throughput.py --model smollm2 # SmolLM2-135M (minutes on 2 CPU cores)

Throughput: the same plan (LoRA r 16 on q,k,v,o; chat rows; a global batch of 8 rows a step and the same
steps) run by `peft-runtime train` as 1 process with all the CPU threads (batchSize 8), and under torchrun as
2 processes with half the threads each (gloo; batchSize 4 per process), once with strategy ddp and once with
fsdp. For fsdp also the model's parameter bytes each rank holds, as the trainer reports them, against the
whole model every ddp rank holds. Tokens/s is the trainer's own
report: real tokens of the whole global batch per second of training steps (model loading excluded). On a
machine with 2 cores this measures what splitting the cores between processes costs or gains; on GPUs each
process has its own device and the comparison is a different one (see bench/gpu_check.py).

Preflight: the wall time of `peft-runtime preflight` on the same plan (process start and imports included),
the CPU time a FineTuneJob with GPUs spends before its GPU Job is created. What it saves (a GPU pod's image
pull and model download before a wrong target or dataset fails) depends on the cluster: the model download
alone is the weights' size over the node's bandwidth.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _model(name: str, scratch: Path) -> Path:
    if name == "tiny":
        from tests.support.tiny_model import build_tiny_llama

        return build_tiny_llama(scratch / "tiny")
    from peft_runtime.models import ensure_smollm2

    return ensure_smollm2()


def _plan(model: Path, data: Path, root: Path, batch_size: int, steps: int, strategy: str = "auto") -> Path:
    from tests.runtime.builders import make_plan

    plan = make_plan(
        model_dir=model,
        dataset_uri=data.as_uri(),
        output_uri=(root / "out").as_uri(),
        work_dir=root,
        method={
            "type": "lora",
            "lora": {"r": 16, "alpha": 32, "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        },
        training={
            "maxSteps": steps,
            "batchSize": batch_size,
            "maxSeqLength": 256,
            "checkpointEvery": steps,
            "strategy": strategy,
        },
        validation_split=0.0,
    )
    path = root / "plan.json"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(plan.model_dump_json(by_alias=True))
    return path


def _run(command: list[str], threads: int) -> tuple[float, str]:
    """Wall seconds and stderr (the trainer's notes)."""
    env = {**os.environ, "PEFT_CPU_THREADS": str(threads), "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    started = time.monotonic()
    done = subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return time.monotonic() - started, done.stderr


def _held_bytes(notes: str) -> dict[int, tuple[int, int]]:
    """rank -> (parameter bytes it holds, the whole model's), from the trainer's fsdp notes."""
    found = re.findall(r"rank (\d+) holds ([\d,]+) of the model's ([\d,]+) parameter bytes", notes)
    return {int(rank): (int(held.replace(",", "")), int(whole.replace(",", ""))) for rank, held, whole in found}


def _tokens_per_second(plan: Path) -> float:
    events_file = Path(json.loads(plan.read_text())["progress"]["file"])
    progress = [json.loads(line) for line in events_file.read_text().splitlines() if '"progress"' in line]
    return float(progress[-1]["progress"]["tokensPerSecond"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    from tests.runtime.builders import varied_chat_rows, write_jsonl

    cores = os.cpu_count() or 1
    runtime = [sys.executable, "-m", "peft_runtime.cli"]
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "peft_runtime.cli",
    ]
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as folder:
        scratch = Path(folder)
        model = _model(args.model, scratch)
        data = write_jsonl(scratch / "chat.jsonl", varied_chat_rows(400))
        one = _plan(model, data, scratch / "one", batch_size=8, steps=args.steps)
        two = _plan(model, data, scratch / "two", batch_size=4, steps=args.steps, strategy="ddp")
        sharded = _plan(model, data, scratch / "fsdp", batch_size=4, steps=args.steps, strategy="fsdp")
        preflight_seconds, _ = _run([*runtime, "preflight", "--plan", str(one)], threads=cores)
        _run([*runtime, "train", "--plan", str(one)], threads=cores)
        _run([*torchrun, "train", "--plan", str(two)], threads=max(1, cores // 2))
        _, notes = _run([*torchrun, "train", "--plan", str(sharded)], threads=max(1, cores // 2))
        single, double, fsdp = _tokens_per_second(one), _tokens_per_second(two), _tokens_per_second(sharded)
    threads = max(1, cores // 2)
    print(f"model {args.model}, {cores} CPU cores, {args.steps} steps, global batch 8 rows")
    print(f"1 process x {cores} threads:               {single:8.1f} tokens/s")
    print(f"2 processes x {threads} threads, ddp (gloo):   {double:8.1f} tokens/s  ({double / single:.2f}x of 1)")
    print(f"2 processes x {threads} threads, fsdp (gloo):  {fsdp:8.1f} tokens/s  ({fsdp / double:.2f}x of ddp)")
    for rank, (held, whole) in sorted(_held_bytes(notes).items()):
        print(
            f"fsdp rank {rank} holds {held / 2**20:8.1f} MiB of the model's parameters, ddp {whole / 2**20:.1f} "
            f"MiB ({held / whole:.2f}x)"
        )
    print(f"peft-runtime preflight (wall, with imports): {preflight_seconds:.1f} s")


if __name__ == "__main__":
    main()
