"""Benchmarks run each variant in a fresh process (clean memory peaks, nothing cached between variants).
The child prints one `RESULT <json>` line; the parent reads it back."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

PREFIX = "RESULT "


def report(result: dict[str, Any]) -> None:
    print(PREFIX + json.dumps(result), flush=True)


def run_child(command: list[str], cwd: Path) -> tuple[dict[str, Any] | None, str]:
    """The child's result, or None with the tail of what it wrote to stderr."""
    out = subprocess.run(command, capture_output=True, text=True, check=False, cwd=cwd)
    line = next((x for x in out.stdout.splitlines() if x.startswith(PREFIX)), None)
    if line is None:
        return None, f"exit {out.returncode}:\n{out.stderr[-3000:]}"
    return json.loads(line.removeprefix(PREFIX)), ""
