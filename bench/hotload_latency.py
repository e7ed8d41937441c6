"""Adapter hot-load latency: from the agent's PUT to the first answer, against restarting the server.

    .venv/bin/python bench/hotload_latency.py                  # SmolLM2-135M
    .venv/bin/python bench/hotload_latency.py --model tiny     # seconds

Hot-load: the built-in server and the adapter agent run on loopback; for each of `--adapters` new adapters
the clock runs from `PUT /v1/adapters/<name>` (the agent copies the adapter from its source, verifies every
sha256 against manifest.json, checks compatibility, and calls the engine's load API) until
`POST /v1/completions` with `model: <name>` has answered. `--source s3` serves the adapters from an
S3-compatible server on loopback (moto) instead of file://.

Restart: what serving a new adapter costs without hot-loading: start `peft-runtime serve --adapter
name=path` as a new process and wait for the same first answer (`--restarts` times).
Goals: hot-load p95 < 2 s on SmolLM2; >= 10x faster than a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_throughput import make_adapters, model_dir

TOKEN = "bench-token"
PROMPT = {"prompt": "Hello, what can you do?", "max_tokens": 1}


def with_manifests(paths: list[Path], base_uri: str) -> list[str]:
    """Write manifest.json into each adapter directory, as the trainer does; returns the digests."""
    from peft_operator.api.manifest import AdapterManifest, ManifestBaseModel
    from peft_runtime.digest import file_digests, write_manifest

    return [
        write_manifest(
            path,
            AdapterManifest(
                files=file_digests(path), base_model=ManifestBaseModel(uri=base_uri), method="lora", rank=16
            ),
        )
        for path in paths
    ]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def hotload(agent_url: str, engine_url: str, sources: list[tuple[str, str, str]]) -> list[tuple[float, float]]:
    """(seconds until the PUT returned, seconds until the first answer) per adapter."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    latencies = []
    async with aiohttp.ClientSession() as session:
        for name, uri, sha in sources:
            started = time.perf_counter()
            async with session.put(
                f"{agent_url}/v1/adapters/{name}", json={"uri": uri, "sha256": sha}, headers=headers
            ) as r:
                assert r.status == 200, await r.text()
            loaded = time.perf_counter() - started
            async with session.post(f"{engine_url}/v1/completions", json={"model": name, **PROMPT}) as r:
                assert r.status == 200, await r.text()
            latencies.append((loaded, time.perf_counter() - started))
    return latencies


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def restart_once(base_dir: Path, adapter: Path, threads: int | None) -> float:
    """Seconds from starting a server process with the adapter until it answered with it."""
    port = free_port()
    command = [sys.executable, "-m", "peft_runtime.cli", "serve", f"--model={base_dir}", f"--port={port}"]
    command += ["--host=127.0.0.1", "--served-model-name=base", f"--adapter=fresh={adapter}", "--log-level=WARNING"]
    if threads:
        command.append(f"--threads={threads}")
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:

        async def first_answer() -> None:
            async with aiohttp.ClientSession() as session:
                while True:
                    try:
                        async with session.post(
                            f"http://127.0.0.1:{port}/v1/completions", json={"model": "fresh", **PROMPT}
                        ) as r:
                            if r.status == 200:
                                return
                    except aiohttp.ClientConnectionError:
                        pass
                    if process.poll() is not None:
                        raise RuntimeError(f"the server exited with {process.returncode}")
                    await asyncio.sleep(0.05)

        asyncio.run(first_answer())
        return time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2", help="smollm2, tiny, or a model directory")
    parser.add_argument("--adapters", type=int, default=20, help="adapters hot-loaded one after another")
    parser.add_argument("--restarts", type=int, default=3, help="server restarts measured")
    parser.add_argument("--source", choices=("file", "s3"), default="file")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()

    from peft_runtime.agent.app import create_app as agent_app
    from peft_runtime.agent.cli import build_agent
    from peft_runtime.common.http_edge import BackgroundServer, TokenSource
    from peft_runtime.serving.app import create_app as server_app
    from peft_runtime.serving.engine import Engine, EngineConfig

    os.environ["PEFT_ADMIN_TOKEN"] = TOKEN
    scratch = Path(tempfile.mkdtemp(prefix="bench-hotload-"))
    base_dir = model_dir(args.model, scratch)
    base_uri = base_dir.resolve().as_uri()
    paths = make_adapters(base_dir, scratch / "adapters", args.adapters, seed=7)
    digests = with_manifests(paths, base_uri)
    uris = [p.as_uri() for p in paths]
    moto = None
    if args.source == "s3":
        from moto.server import ThreadedMotoServer

        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        moto.start()
        host, port = moto.get_host_and_port()
        os.environ.update(
            AWS_ENDPOINT_URL=f"http://{host}:{port}",
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",
            AWS_DEFAULT_REGION="us-east-1",
        )
        import boto3

        client = boto3.client("s3")
        client.create_bucket(Bucket="adapters")
        uris = []
        for path in paths:
            for file in path.iterdir():
                client.upload_file(str(file), "adapters", f"{path.name}/{file.name}")
            uris.append(f"s3://adapters/{path.name}")

    engine = Engine(
        EngineConfig(model_dir=base_dir, served_name="base", max_adapters=args.adapters, threads=args.threads)
    ).start()
    server = BackgroundServer(lambda: server_app(engine, TokenSource())).start()
    agent_args = argparse.Namespace(
        engine_url=server.url,
        engine="auto",
        adapter_root=scratch / "volume",
        pvc_root=scratch / "pvc",
        file_root=None,
        token_file=None,
        engine_token_file=None,
        base_model_uri=base_uri,
        base_model_revision=None,
        base_model_dir=base_dir,
        max_adapters=args.adapters,
        max_rank=64,
        engine_timeout=120.0,
    )
    agent = BackgroundServer(lambda: agent_app(build_agent(agent_args), TokenSource())).start()
    sources = [(f"tenant-{i}", uri, sha) for i, (uri, sha) in enumerate(zip(uris, digests, strict=True))]
    asyncio.run(hotload(agent.url, server.url, sources[:1]))  # warm-up (first request, first load)
    timings = asyncio.run(hotload(agent.url, server.url, sources[1:]))
    latencies = [answered for _, answered in timings]
    puts = [loaded for loaded, _ in timings]
    agent.stop()
    server.stop()
    engine.stop()
    if moto is not None:
        moto.stop()

    restarts = [restart_once(base_dir, paths[0], args.threads) for _ in range(args.restarts)]
    p50, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
    restart = statistics.median(restarts)
    print(f"model {args.model}, source {args.source}, {len(latencies)} adapters hot-loaded one after another")
    print(
        f"  hot-load via agent + server: p50 {p50 * 1000:7.0f} ms   p95 {p95 * 1000:7.0f} ms   max {max(latencies) * 1000:.0f} ms"
    )
    print(
        f"    of which the PUT (fetch, verify, check, load): p50 {percentile(puts, 0.5) * 1000:.0f} ms   p95 {percentile(puts, 0.95) * 1000:.0f} ms"
    )
    print(f"  restart with the adapter:    median {restart:6.1f} s    ({', '.join(f'{r:.1f}' for r in restarts)} s)")
    print(f"RESULT hot-load p95 {p95:.2f} s (goal < 2 s); {restart / p95:.0f}x faster than a restart (goal >= 10x)")


if __name__ == "__main__":
    main()
