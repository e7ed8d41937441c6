"""QLoRA memory: peak memory of QLoRA (4-bit nf4 base) against LoRA on an fp32 base, SmolLM2-135M on CPU, and
of LoRA with gradient checkpointing (what training.gradientCheckpointing saves; qlora always has it).

    .venv/bin/python bench/qlora_memory.py                 # SmolLM2-135M
    .venv/bin/python bench/qlora_memory.py --model tiny    # the tiny test Llama (plumbing check only)

Each variant runs in its own process and builds the model exactly as `peft-runtime train` does
(`load_base_model` + `attach_adapter`: for qlora bitsandbytes nf4 with double quantization, fp32 compute
on CPU, prepare_model_for_kbit_training with gradient checkpointing; for lora an fp32 base, without and
with gradient checkpointing), then trains
`--steps` AdamW steps on the same batches. Measured, per process (Linux /proc/self/status):
- RSS after the imports (the floor: Python, torch, transformers, peft);
- peak RSS while loading the model (VmHWM);
- peak RSS while training, after resetting the peak (/proc/self/clear_refs), and its increase over the floor;
- the peak of anonymous memory (RssAnon, sampled every 5 ms: what the process allocated, without file
  pages such as the mmapped checkpoint, which the kernel can drop) while training, over its floor;
- bytes held by the model's parameters and buffers (packed 4-bit weights count as stored);
- seconds per training step (a shared machine: a rough figure, not the point of this benchmark).
`--glibc-defaults` runs both without the trainer's fixed mmap threshold (train/memory.py), to show its effect.
Goal: QLoRA <= 0.35x LoRA (anonymous training peak over the floor).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.child_result import report, run_child  # noqa: E402  (after the path set-up)

METHODS = {
    "lora": {"type": "lora", "lora": {"r": 16, "alpha": 32, "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj"]}},
    "qlora": {
        "type": "qlora",
        "qlora": {
            "r": 16,
            "alpha": 32,
            "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj"],
            "quantization": {"bits": 4, "type": "nf4", "doubleQuant": True},
        },
    },
}


RECOMPUTE = "-recompute"  # a variant with gradient checkpointing
VARIANTS = ("lora", "lora" + RECOMPUTE, "qlora")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class AnonymousPeak:
    """Samples RssAnon (memory the process itself allocated; no file-backed pages such as the mmapped
    safetensors file) every few milliseconds on a thread, keeping the highest value."""

    def __init__(self) -> None:
        import threading

        self.peak = _status_kib("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _status_kib("RssAnon"))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _status_kib("RssAnon"))


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def _mib(kib: int) -> float:
    return round(kib / 1024, 1)


def child(args: argparse.Namespace) -> None:
    import torch
    import transformers  # noqa: F401
    from peft import get_peft_model  # noqa: F401

    if args.variant == "qlora":
        import bitsandbytes  # noqa: F401

    from peft_operator.api.methods import Method
    from peft_runtime.train.batches import collate
    from peft_runtime.train.data import Example
    from peft_runtime.train.loss import AnswerLoss
    from peft_runtime.train.memory import map_large_blocks
    from peft_runtime.train.methods import MethodContext, attach_adapter, load_base_model, method_setup

    if not args.glibc_defaults:
        map_large_blocks()  # as `peft-runtime train` does on CPU
    torch.manual_seed(0)
    floor = _status_kib("VmRSS")
    floor_anon = _status_kib("RssAnon")
    _reset_peak()
    cpu = torch.device("cpu")
    method = Method.model_validate(METHODS[args.variant.removesuffix(RECOMPUTE)])
    setup = method_setup(method, MethodContext(Path(args.model_dir), cpu))
    if args.variant.endswith(RECOMPUTE):
        setup = replace(setup, gradient_checkpointing=True)
    model = attach_adapter(load_base_model(Path(args.model_dir), setup, torch.float32, cpu), setup)
    loading_peak = _status_kib("VmHWM")
    loaded = _status_kib("VmRSS")
    model_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])

    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(1)
    examples = []
    for _ in range(args.batch_size):
        ids = torch.randint(0, vocab, (args.seq_length,), generator=generator).tolist()
        examples.append(Example(ids, [*ids[1:], -100]))
    batch = collate(examples, [[i] for i in range(args.batch_size)], 0, packed=False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    loss_of = AnswerLoss(model, setup)
    model.train()
    _reset_peak()
    anonymous = AnonymousPeak()
    started = time.monotonic()
    for _ in range(args.steps):
        loss = loss_of(batch) / batch.loss_tokens
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds_per_step = (time.monotonic() - started) / args.steps
    training_peak = _status_kib("VmHWM")
    anonymous_peak = anonymous.stop()
    report(
        {
            "floor_mib": _mib(floor),
            "loading_peak_mib": _mib(loading_peak),
            "loaded_mib": _mib(loaded),
            "training_peak_mib": _mib(training_peak),
            "training_over_floor_mib": _mib(training_peak - floor),
            "model_mib": round(model_bytes / 2**20, 1),
            "anonymous_over_floor_mib": _mib(anonymous_peak - floor_anon),
            "seconds_per_step": round(seconds_per_step, 2),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument(
        "--glibc-defaults",
        action="store_true",
        help="keep glibc's dynamic mmap threshold (the trainer fixes it at 2 MiB on CPU): shows what it costs",
    )
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        child(args)
        return

    with tempfile.TemporaryDirectory(prefix="bench-qlora-") as tmp:
        if args.model == "tiny":
            from tests.support.tiny_model import build_tiny_llama

            model_dir = build_tiny_llama(Path(tmp) / "tiny")
        else:
            from peft_runtime.models import ensure_smollm2

            model_dir = ensure_smollm2()
        results = {}
        for variant in VARIANTS:
            options = {
                "variant": variant,
                "model_dir": model_dir,
                "batch_size": args.batch_size,
                "seq_length": args.seq_length,
                "steps": args.steps,
                "glibc_defaults": args.glibc_defaults,
            }
            result, failure = run_child(__file__, options)
            if result is None:
                sys.exit(f"{variant} failed ({failure}")
            results[variant] = result

    allocator = "glibc defaults" if args.glibc_defaults else "2 MiB mmap threshold, as the trainer"
    print(
        f"model {args.model}, batch {args.batch_size} x {args.seq_length} tokens, {args.steps} AdamW steps, "
        f"CPU, {allocator}\n"
    )
    print(f"{'MiB':<28}{'lora (fp32)':>14}{'+ recompute':>14}{'qlora (nf4)':>14}{'ratio':>9}{'ratio':>9}")
    for key, label in (
        ("model_mib", "model parameters+buffers"),
        ("floor_mib", "RSS after imports"),
        ("loading_peak_mib", "peak RSS while loading"),
        ("training_peak_mib", "peak RSS while training"),
        ("training_over_floor_mib", "training peak over floor"),
        ("anonymous_over_floor_mib", "anon. training peak - floor"),
        ("seconds_per_step", "seconds per step"),
    ):
        lora, recompute, qlora = (results[v][key] for v in VARIANTS)
        print(f"{label:<28}{lora:>14.1f}{recompute:>14.1f}{qlora:>14.1f}{recompute / lora:>8.2f}x{qlora / lora:>8.2f}x")
    anonymous = {v: results[v]["anonymous_over_floor_mib"] for v in VARIANTS}
    print(
        f"\nqlora / lora (anonymous training peak over the floor): {anonymous['qlora'] / anonymous['lora']:.2f}x   "
        "(goal <= 0.35x)"
    )
    print(f"lora with gradient checkpointing / lora: {anonymous['lora' + RECOMPUTE] / anonymous['lora']:.2f}x")


if __name__ == "__main__":
    main()
