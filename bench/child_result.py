"""Benchmarks run each variant in a fresh process (clean memory peaks, nothing cached between variants).
The child is the benchmark script itself, given `--variant=...` and friends; it prints one
`RESULT <json>` line, and the parent reads it back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

PREFIX = "RESULT "
ROOT = Path(__file__).resolve().parents[1]


def report(result: dict[str, Any]) -> None:
    print(PREFIX + json.dumps(result), flush=True)


def run_child(script: str, options: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """Run `script` with `--name=value` per option (True: a bare flag; False: left out), from the repository
    root. The child's result, or None with the tail of what it wrote to stderr."""
    results, failure = _run([sys.executable, script], options)
    return (results[0], "") if results else (None, failure)


def run_ranks(script: str, options: dict[str, Any], processes: int) -> tuple[list[dict[str, Any]], str]:
    """`script` as `processes` ranks under torchrun: every rank's result, or none with the stderr's tail."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    results, failure = _run([*torchrun, script], options)
    if len(results) < processes:
        return [], f"{len(results)} of {processes} ranks reported; {failure}"
    return results, ""


def _run(command: list[str], options: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """The results the command printed, and its exit code with the tail of its stderr."""
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            command.append(flag)
        elif value is not False:
            command.append(f"{flag}={value}")
    out = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    results = [json.loads(x.removeprefix(PREFIX)) for x in out.stdout.splitlines() if x.startswith(PREFIX)]
    return results, f"exit {out.returncode}:\n{out.stderr[-3000:]}"
