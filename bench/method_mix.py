"""Cost of serving every PEFT method in shared batches on the built-in engine, against the base model.

    .venv/bin/python bench/method_mix.py --threads 1                 # SmolLM2-135M (converted once from the wheel)
    .venv/bin/python bench/method_mix.py --model tiny --threads 1    # the tests' tiny Llama: seconds

Every method's rows share the batch with the others (no grouping by method): LoRA rows through the stacked
LoRA layers, IA3 and bottleneck rows through per-row hooks, prefix and prompt tuning through their virtual
tokens in the prefill. One engine holds one adapter of each method (random, non-zero weights); the same
requests (same prompts, `--tokens` tokens each, EOS ignored) run through its batching scheduler as:
- base: every request on the base model, the adapters loaded but unused;
- one method: every request on that method's adapter;
- all mixed: requests round-robin over the five adapters (LoRA, IA3, bottleneck, prefix, prompt) in the
  same batches.
Printed per configuration: tokens per second of wall time, and tokens per CPU-second of this process (the
median of `--repeats` interleaved rounds) with its ratio to base. On a CPU shared with other work, wall
time mostly measures the neighbours; CPU time measures the engine's own work (run with `--threads 1`, so
torch computes on the scheduler's thread and nothing else in the process is busy).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.serving_throughput import model_dir, run_engine

METHODS = ("lora", "ia3", "adapter", "prefix", "prompt")


def make_adapters(base_dir: Path, out: Path) -> dict[str, Path]:
    from tests.support.adapters import (
        make_bottleneck_adapter,
        make_ia3_adapter,
        make_lora_adapter,
        make_prefix_tuning_adapter,
        make_prompt_tuning_adapter,
    )

    return {
        "lora": make_lora_adapter(base_dir, out / "lora", seed=1, r=16).path,
        "ia3": make_ia3_adapter(base_dir, out / "ia3", seed=2).path,
        "adapter": make_bottleneck_adapter(base_dir, out / "adapter", seed=3).path,
        "prefix": make_prefix_tuning_adapter(base_dir, out / "prefix", seed=4, tokens=16).path,
        "prompt": make_prompt_tuning_adapter(base_dir, out / "prompt", seed=5, tokens=16).path,
    }


def rates(engine: Any, adapters: list[str | None], requests: int, tokens: int) -> tuple[float, float]:
    """(tokens per wall second, tokens per CPU-second of this process) for one round."""
    cpu = time.process_time()
    wall = run_engine(engine, adapters, requests, tokens)
    return wall, requests * tokens / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2", help="smollm2, tiny, or a model directory")
    parser.add_argument("--requests", type=int, default=40, help="requests per measurement")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per request")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the median counts")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    import torch

    from peft_runtime.serving.engine import Engine, EngineConfig

    scratch = Path(tempfile.mkdtemp(prefix="bench-methods-"))
    base_dir = model_dir(args.model, scratch)
    paths = make_adapters(base_dir, scratch / "adapters")
    engine = Engine(
        EngineConfig(model_dir=base_dir, served_name="base", device=args.device, threads=args.threads)
    ).start()
    for name, path in paths.items():
        engine.registry.load(name, path)
    print(
        f"model {args.model} on {engine.device} ({torch.get_num_threads()} threads); {args.requests} requests x "
        f"{args.tokens} tokens; LoRA r=16 q,v; IA3 k,v,down; bottleneck 1/8 after attention+MLP; prefix and "
        f"prompt 16 virtual tokens; {args.repeats} interleaved rounds"
    )
    configs: list[tuple[str, list[str | None]]] = [("base", [None])]
    configs += [(method, [method]) for method in METHODS]
    configs.append(("all mixed", list(METHODS)))
    for _, adapters in configs:  # warm-up
        run_engine(engine, adapters, 8, 4)
    wall: dict[str, list[float]] = {label: [] for label, _ in configs}
    cpu: dict[str, list[float]] = {label: [] for label, _ in configs}
    for _ in range(args.repeats):
        for label, adapters in configs:
            round_wall, round_cpu = rates(engine, adapters, args.requests, args.tokens)
            wall[label].append(round_wall)
            cpu[label].append(round_cpu)
    engine.stop()
    per_cpu = {label: statistics.median(values) for label, values in cpu.items()}
    for label in per_cpu:
        print(
            f"  {label:10s} {statistics.median(wall[label]):8.1f} tok/s wall, {per_cpu[label]:8.1f} tok/CPU-s  "
            f"{per_cpu[label] / per_cpu['base']:5.2f}x base"
        )
    print(f"RESULT all methods mixed in one batch = {per_cpu['all mixed'] / per_cpu['base']:.2f}x base (CPU time)")


if __name__ == "__main__":
    main()
