"""Start the adapter agent in the test process, configured through its real command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def start_agent(token_file: Path, *flags: str) -> Any:
    """A running agent (BackgroundServer) built from `peft-runtime agent <flags>` exactly as the CLI parses it."""
    from peft_runtime.agent.app import create_app
    from peft_runtime.agent.cli import build_agent
    from peft_runtime.cli import build_parser
    from peft_runtime.common.http_edge import BackgroundServer, TokenSource

    args = build_parser().parse_args(["agent", f"--token-file={token_file}", *flags])
    return BackgroundServer(lambda: create_app(build_agent(args), TokenSource(token_file))).start()
