"""GPU check: bf16 LoRA and QLoRA on SmolLM2-135M through `peft-runtime train`: tokens/s and peak memory.

    .venv/bin/python bench/gpu_check.py [--steps 40] [--batch-size 16]

For a machine with an NVIDIA GPU (on CPU it exits at once and says so). Each variant runs in its own
process with precision auto (bf16 where the GPU supports it) and reports the trainer's real tokens/s and
torch.cuda.max_memory_allocated; the run's final loss shows that it trained.

With 2 or more GPUs it then runs each variant under torchrun on all of them (NCCL), once with
training.strategy ddp and once with fsdp, and prints every rank's peak memory: fsdp's should be lower by
about the base's weights x (1 - 1/GPUs). With one GPU that part is skipped (two NCCL ranks cannot share a
device). Never run yet: no machine with 2 GPUs was lent to this project.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.child_result import report, run_child, run_ranks  # noqa: E402  (after the path set-up)

VARIANTS = {
    "lora-bf16": {
        "type": "lora",
        "lora": {"r": 16, "alpha": 32, "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
    },
    "qlora-nf4": {
        "type": "qlora",
        "qlora": {
            "r": 16,
            "alpha": 32,
            "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj"],
            "quantization": {"bits": 4, "type": "nf4", "doubleQuant": True},
        },
    },
}


def child(args: argparse.Namespace) -> None:
    import torch

    from peft_operator.api.plan import TrainingPlan
    from peft_runtime.train.run import run_plan

    scratch = Path(args.scratch)
    run_name = f"{args.variant}-{args.strategy or 'single'}"
    events = scratch / f"{run_name}.jsonl"
    plan = TrainingPlan.model_validate(
        {
            "job": {"name": "gpu-check"},
            "spec": {
                "baseModel": {"uri": Path(args.model_dir).as_uri()},
                "dataset": {"uri": Path(args.data).as_uri(), "format": "chat", "validationSplit": 0.0},
                "method": VARIANTS[args.variant],
                "training": {
                    "maxSteps": args.steps,
                    "learningRate": "2e-4",
                    "batchSize": args.batch_size,
                    "maxSeqLength": 1024,
                    "checkpointEvery": 1_000_000,
                    "precision": "auto",
                    **({"strategy": args.strategy} if args.strategy else {}),
                },
                "output": {"uri": (scratch / run_name).as_uri()},
            },
            "progress": {"file": str(events)},
            "workDir": str(scratch / f"work-{run_name}"),
        }
    )
    code = run_plan(plan, stdout=False)
    rank = int(os.environ.get("RANK", "0"))
    if rank > 0:  # rank 0 alone writes the events
        report(
            {"rank": rank, "exit_code": code, "peak_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
        )
        return
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    progress = [e["progress"] for e in lines if e["event"] == "progress"]
    result = {
        "rank": rank,
        "exit_code": code,
        "tokens_per_second": progress[-1]["tokensPerSecond"] if progress else None,
        "first_loss": progress[0]["loss"] if progress else None,
        "last_loss": progress[-1]["loss"] if progress else None,
        "peak_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
        "bf16": torch.cuda.is_bf16_supported(),
        "gpu": torch.cuda.get_device_name(0),
    }
    report(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        child(args)
        return

    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA GPU is visible here (torch.cuda.is_available() is False); run it on a GPU machine")

    from bench.trainer_throughput import chat_rows
    from peft_runtime.models import ensure_smollm2

    model_dir = ensure_smollm2()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        data = Path(tmp) / "chat.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in chat_rows(2000)))
        print(f"SmolLM2-135M, {args.steps} steps x batch {args.batch_size}, variable-length chat rows")
        for variant in VARIANTS:
            options = {
                "variant": variant,
                "scratch": tmp,
                "model_dir": model_dir,
                "data": data,
                "steps": args.steps,
                "batch_size": args.batch_size,
            }
            r, failure = run_child(__file__, options)
            if r is None:
                print(f"{variant}: FAILED ({failure}")
                continue
            print(
                f"{variant:>10}: {r['tokens_per_second']:>10.1f} tokens/s  peak {r['peak_memory_mib']:>8.1f} MiB  "
                f"loss {r['first_loss']:.3f} -> {r['last_loss']:.3f}  exit {r['exit_code']}  ({r['gpu']}, bf16 {r['bf16']})"
            )
        _ddp_vs_fsdp(
            options_base={
                "scratch": tmp,
                "model_dir": model_dir,
                "data": data,
                "steps": args.steps,
                "batch_size": args.batch_size,
            }
        )


def _ddp_vs_fsdp(options_base: dict[str, object]) -> None:
    """Each variant on every GPU under torchrun (NCCL), ddp then fsdp: every rank's peak memory."""
    import torch

    gpus = torch.cuda.device_count()
    if gpus < 2:
        print(f"ddp vs fsdp: skipped, {gpus} GPU visible (two NCCL ranks cannot share a device)")
        return
    for variant in VARIANTS:
        for strategy in ("ddp", "fsdp"):
            ranks, failure = run_ranks(__file__, {**options_base, "variant": variant, "strategy": strategy}, gpus)
            if not ranks:
                print(f"{variant} {strategy} on {gpus} GPUs: FAILED ({failure}")
                continue
            peaks = "  ".join(
                f"rank {r['rank']} {r['peak_memory_mib']:.1f} MiB" for r in sorted(ranks, key=lambda r: r["rank"])
            )
            rank_0 = next((r for r in ranks if r["rank"] == 0), {})
            print(f"{variant} {strategy} on {gpus} GPUs: {rank_0.get('tokens_per_second')} tokens/s  peak {peaks}")


if __name__ == "__main__":
    main()
