"""Many registered adapters, few in memory: the built-in engine under Zipf-distributed tenant traffic.

    .venv/bin/python bench/adapter_residency.py                 # SmolLM2-135M, 500 adapters, 32 resident
    .venv/bin/python bench/adapter_residency.py --model tiny    # the tests' tiny Llama: a quick run

Every configuration answers the same request sequence (adapters drawn from a Zipf distribution, s = 1.1, by a
fixed seed) with `--clients` requests in flight, each holding its adapter as an HTTP request does
(`AdapterRegistry.hold`: an evicted adapter is cold-loaded first, the least recently used idle one evicted):
- all resident: every registered adapter in memory (the baseline);
- LRU: the same adapters registered, at most `--resident` in memory;
- per-request cost: uniform traffic over `--resident` adapters with 50 registered vs all registered (both
  within memory: what registering many more costs a request that needs no cold load).
Goals (issue 15): LRU >= 0.8x all-resident throughput; 500 vs 50 registered within 1.2x per request.
Printed as well: p95 latency of requests that had to cold-load, and the adapter weights held in memory.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.serving_throughput import PROMPTS, make_adapters, model_dir


def zipf_sequence(count: int, adapters: int, s: float, seed: int) -> list[int]:
    """`count` adapter indices, index k drawn with probability proportional to 1 / (k + 1) ** s."""
    weights = [1 / (k + 1) ** s for k in range(adapters)]
    return random.Random(seed).choices(range(adapters), weights=weights, k=count)


def resident_weights_mib(engine: Any) -> float:
    """Adapter weights held in memory now (the part of memory that residency bounds)."""
    return sum(a.size_bytes for a in engine.registry.adapters() if a.resident) / 2**20


class Traffic:
    """Runs a request sequence through an engine, `clients` at a time; records latencies of cold requests."""

    def __init__(self, engine: Any, tokens: int) -> None:
        from peft_runtime.serving.generation import SamplingParams

        self.engine = engine
        self.params = SamplingParams(max_tokens=tokens, ignore_eos=True)
        self.prompts = [engine.encode(p) for p in PROMPTS]
        self.cold_latencies: list[float] = []
        self._lock = threading.Lock()

    def _one(self, index: int, name: str) -> None:
        from peft_runtime.serving.generation import Finished, GenerationRequest

        registry = self.engine.registry
        started = time.perf_counter()
        cold = not any(a.name == name and a.resident for a in registry.adapters())
        registry.hold(name)
        try:
            done = threading.Event()

            def emit(event: Any) -> None:
                if isinstance(event, Finished):
                    assert event.error is None, event.error
                    done.set()

            request = GenerationRequest(name, self.prompts[index % len(self.prompts)], self.params, emit)
            self.engine.scheduler.submit(request)
            done.wait()
        finally:
            registry.unhold(name)
        if cold:
            with self._lock:
                self.cold_latencies.append(time.perf_counter() - started)

    def run(self, names: list[str], clients: int) -> float:
        """Generated tokens per second over the whole sequence."""
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=clients) as pool:
            for future in [pool.submit(self._one, i, name) for i, name in enumerate(names)]:
                future.result()
        return len(names) * self.params.max_tokens / (time.perf_counter() - started)


def serving_engine(base_dir: Path, paths: list[Path], *, resident: int, args: argparse.Namespace) -> Any:
    from peft_runtime.serving.engine import Engine, EngineConfig

    engine = Engine(
        EngineConfig(
            model_dir=base_dir,
            served_name="base",
            max_adapters=len(paths),
            max_resident=resident,
            resident_wait_s=600,
            max_rank=16,
            max_batch_size=args.clients,
            threads=args.threads,
        )
    ).start()
    for i, path in enumerate(paths):
        engine.registry.load(f"adapter-{i}", path)
    return engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2", help="smollm2, tiny, or a model directory")
    parser.add_argument("--registered", type=int, default=500)
    parser.add_argument("--resident", type=int, default=32)
    parser.add_argument("--requests", type=int, default=256, help="requests per measurement")
    parser.add_argument("--clients", type=int, default=16, help="requests in flight")
    parser.add_argument("--tokens", type=int, default=16, help="new tokens per request")
    parser.add_argument("--zipf", type=float, default=1.1, help="the Zipf exponent s")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="bench-residency-"))
    base_dir = model_dir(args.model, scratch)
    paths = make_adapters(base_dir, scratch / "adapters", args.registered, r=8)
    sequence = [f"adapter-{i}" for i in zipf_sequence(args.requests, args.registered, args.zipf, seed=0)]
    print(
        f"model {args.model}; {args.registered} LoRA adapters (r=8, q_proj+v_proj); {args.requests} requests x "
        f"{args.tokens} tokens, {args.clients} in flight; Zipf s={args.zipf}: "
        f"{len(set(sequence))} distinct adapters asked for"
    )

    lru = serving_engine(base_dir, paths, resident=args.resident, args=args)
    Traffic(lru, 2).run(sequence[: args.clients], args.clients)  # warm-up
    lru_traffic = Traffic(lru, args.tokens)
    lru_rate = lru_traffic.run(sequence, args.clients)
    lru_memory = resident_weights_mib(lru)
    cold = sorted(lru_traffic.cold_latencies)
    p95_cold = cold[int(0.95 * (len(cold) - 1))] if cold else float("nan")
    lru.stop()

    everything = serving_engine(base_dir, paths, resident=args.registered, args=args)
    Traffic(everything, 2).run(sequence[: args.clients], args.clients)
    all_rate = Traffic(everything, args.tokens).run(sequence, args.clients)
    all_memory = resident_weights_mib(everything)
    everything.stop()

    uniform = [f"adapter-{i % args.resident}" for i in range(args.requests)]
    few = serving_engine(base_dir, paths[:50], resident=args.resident, args=args)
    many = serving_engine(base_dir, paths, resident=args.resident, args=args)
    for engine in (few, many):  # warm the resident set: the same `--resident` adapters in both
        Traffic(engine, 2).run(uniform[: args.resident], 1)
    few_rates, many_rates = [], []
    for _ in range(3):  # interleaved: the machine's noise hits both alike
        few_rates.append(Traffic(few, args.tokens).run(uniform, args.clients))
        many_rates.append(Traffic(many, args.tokens).run(uniform, args.clients))
    few.stop()
    many.stop()
    per_request = statistics.median(few_rates) / statistics.median(many_rates)

    print(f"  all {args.registered} resident       {all_rate:8.1f} tok/s   adapter weights {all_memory:7.1f} MiB")
    print(
        f"  {args.resident} resident (LRU)      {lru_rate:8.1f} tok/s   adapter weights {lru_memory:7.1f} MiB; "
        f"{len(cold)} cold requests, p95 {p95_cold * 1000:.0f} ms"
    )
    print(
        f"  per request, 50 vs {args.registered} registered: {statistics.median(few_rates):.1f} vs "
        f"{statistics.median(many_rates):.1f} tok/s"
    )
    print(
        f"RESULT LRU ({args.resident} of {args.registered} resident) = {lru_rate / all_rate:.2f}x all-resident "
        f"throughput (goal >= 0.8); cold p95 {p95_cold * 1000:.0f} ms; per-request cost {args.registered} vs 50 "
        f"registered = {per_request:.2f}x (goal <= 1.2)"
    )


if __name__ == "__main__":
    main()
