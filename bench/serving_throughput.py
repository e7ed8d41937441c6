"""Throughput of the built-in server with many adapters in mixed batches, against baselines from the same run.

    .venv/bin/python bench/serving_throughput.py                 # SmolLM2-135M (converted once from the wheel)
    .venv/bin/python bench/serving_throughput.py --model tiny    # the tests' tiny Llama: seconds

Every configuration runs the same requests (same prompts, `--tokens` tokens each, EOS ignored) through the
engine's batching scheduler (no HTTP, so the engine is what is measured):
- base: the base model alone, no adapter loaded;
- N adapters (1, 16, 50): requests spread round-robin over N LoRA adapters, mixed in the same batches;
- naive: what a server without mixed batches does, one request at a time: `set_adapter(name)` then
  `generate` (peft's PeftModel with the same adapters loaded).
Goals: 50 adapters >= 0.8x base; mixed 50 adapters >= 4x naive.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [
    "Summarize the refund policy for a customer who ordered the wrong size.",
    "What is the capital of France, and what is it famous for?",
    "Write a short, friendly reply to a billing question about an invoice.",
    "Explain what a contract clause about notice periods means.",
]


def model_dir(choice: str, scratch: Path) -> Path:
    if choice == "tiny":
        sys.path.insert(0, str(REPO))
        from tests.support.tiny_model import build_tiny_llama

        return build_tiny_llama(scratch / "tiny", seed=0)
    if choice == "smollm2":
        from peft_runtime.models import ensure_smollm2

        return ensure_smollm2()
    return Path(choice)


def make_adapters(base_dir: Path, out: Path, count: int, *, r: int = 16, seed: int = 0) -> list[Path]:
    """`count` LoRA adapters (q_proj, v_proj) with random, non-zero weights, saved as peft saves them."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir),
        LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    paths = []
    generator = torch.Generator().manual_seed(seed)
    for i in range(count):
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
        path = out / f"adapter-{i:03d}"
        model.save_pretrained(path)
        paths.append(path)
    return paths


def run_engine(engine: Any, adapters: list[str | None], requests: int, tokens: int) -> float:
    """Tokens per second for `requests` requests submitted at once, round-robin over `adapters`."""
    from peft_runtime.serving.generation import Finished, GenerationRequest, SamplingParams

    done = threading.Event()
    finished = [0]
    lock = threading.Lock()

    def emit(event: Any) -> None:
        if isinstance(event, Finished):
            assert event.error is None, event.error
            with lock:
                finished[0] += 1
                if finished[0] == requests:
                    done.set()

    params = SamplingParams(max_tokens=tokens, ignore_eos=True)
    prompts = [engine.encode(p) for p in PROMPTS]
    started = time.perf_counter()
    for i in range(requests):
        engine.scheduler.submit(GenerationRequest(adapters[i % len(adapters)], prompts[i % len(prompts)], params, emit))
    done.wait()
    return requests * tokens / (time.perf_counter() - started)


def run_naive(base_dir: Path, adapter_paths: list[Path], requests: int, tokens: int, device: str) -> float:
    """One request at a time: set_adapter, then generate (greedy, `tokens` new tokens)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).to(device), str(adapter_paths[0]), "a0"
    )
    for i, path in enumerate(adapter_paths[1:], start=1):
        model.load_adapter(str(path), f"a{i}")
    model.eval()
    prompts = [tokenizer(p, return_tensors="pt").input_ids.to(device) for p in PROMPTS]
    started = time.perf_counter()
    for i in range(requests):
        model.set_adapter(f"a{i % len(adapter_paths)}")
        ids = prompts[i % len(prompts)]
        with torch.inference_mode():
            model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
    return requests * tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2", help="smollm2, tiny, or a model directory")
    parser.add_argument("--adapters", default="1,16,50", help="adapter counts to mix")
    parser.add_argument("--requests", type=int, default=64, help="requests per measurement")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per request")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the median counts")
    parser.add_argument("--naive-requests", type=int, default=16, help="requests for the (slow) naive baseline")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    import torch

    from peft_runtime.serving.engine import Engine, EngineConfig

    counts = [int(c) for c in args.adapters.split(",")]
    scratch = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    base_dir = model_dir(args.model, scratch)
    paths = make_adapters(base_dir, scratch / "adapters", max(counts))

    def engine() -> Engine:
        config = EngineConfig(
            model_dir=base_dir,
            served_name="base",
            max_adapters=max(counts),
            max_batch_size=args.max_batch_size,
            device=args.device,
            threads=args.threads,
        )
        return Engine(config).start()

    plain, serving = engine(), engine()  # the base model alone (no peft layers at all), and one with adapters
    names = [f"adapter-{i}" for i in range(max(counts))]
    for name, path in zip(names, paths, strict=True):
        serving.registry.load(name, path)
    print(
        f"model {args.model} on {plain.device} ({torch.get_num_threads()} threads); {args.requests} requests x "
        f"{args.tokens} tokens, max batch {args.max_batch_size}, LoRA r=16 on q_proj+v_proj; median of "
        f"{args.repeats} interleaved rounds"
    )
    configs: list[tuple[str, Any, list[str | None]]] = [("base model alone", plain, [None])]
    configs += [(f"{n} adapters, mixed", serving, list(names[:n])) for n in counts]
    for _, target, adapters in configs:  # warm-up
        run_engine(target, adapters, min(8, args.requests), 4)
    rates: dict[str, list[float]] = {label: [] for label, _, _ in configs}
    for _ in range(args.repeats):
        for label, target, adapters in configs:
            rates[label].append(run_engine(target, adapters, args.requests, args.tokens))
    plain.stop()
    serving.stop()
    median = {label: statistics.median(values) for label, values in rates.items()}
    base = median["base model alone"]
    for label, rate in median.items():
        spread = f"{min(rates[label]):.0f}-{max(rates[label]):.0f}"
        print(f"  {label:22s} {rate:9.1f} tok/s  ({spread})  {rate / base:5.2f}x base")
    naive = run_naive(base_dir, paths, args.naive_requests, args.tokens, plain.device)
    top = median[f"{max(counts)} adapters, mixed"]
    print(f"  naive set_adapter+generate {naive:6.1f} tok/s  ({max(counts)} adapters, one request at a time)")
    print(
        f"RESULT {max(counts)} adapters mixed = {top / base:.2f}x base (goal >= 0.8); "
        f"{top / naive:.1f}x naive switching (goal >= 4)"
    )


if __name__ == "__main__":
    main()
