"""The `agent` subcommand: argparse only (registered by peft_runtime.cli)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from ..common.options import add_adapter_checks, add_http_options, add_pvc_root


def register(subcommands: Any) -> None:
    parser = subcommands.add_parser(
        "agent",
        help="adapter sidecar: fetch, verify and load adapters into the engine",
        description=(
            "Serve the adapter API the operator calls (PUT/DELETE/GET /v1/adapters): fetch an adapter from "
            "s3://, pvc://, file:// (local mode) or hf:// into the shared volume, verify its sha256 digests and its "
            "compatibility, and load it into the engine on localhost."
        ),
    )
    parser.add_argument("--engine-url", default="http://127.0.0.1:8000", help="the engine's HTTP API")
    parser.add_argument(
        "--engine", choices=("auto", "builtin", "vllm"), default="auto", help="which engine (auto: ask its /v1/models)"
    )
    parser.add_argument(
        "--adapter-root", type=Path, default=Path("/adapters"), help="the volume shared with the engine"
    )
    add_pvc_root(parser)
    parser.add_argument(
        "--file-root",
        type=Path,
        action="append",
        help=(
            "a directory file:// adapters may come from (repeatable); without one, file:// is accepted anywhere "
            "in local mode and refused inside a cluster"
        ),
    )
    add_http_options(parser, port=8001, token_help="bearer token for this API")
    parser.add_argument(
        "--engine-token-file", type=Path, help="bearer token for the engine's load API (default: this API's token)"
    )
    add_adapter_checks(parser)
    parser.add_argument("--base-model-dir", type=Path, help="the base model's files: check target modules and shapes")
    parser.add_argument("--engine-timeout", type=float, default=300.0, help="seconds to wait for one engine call")
    parser.add_argument(
        "--keyring-file",
        type=Path,
        help="serve PUT /v1/keyring and write the engine gate's API key digests here (access.apiKeys: Required)",
    )
    parser.set_defaults(run=run)


def build_agent(args: argparse.Namespace) -> Any:
    """The AdapterAgent the arguments describe (used by `run`, tests and benchmarks)."""
    from peft_runtime.common.http_edge import TokenSource

    from .compat import Compatibility
    from .engine_client import EngineClient
    from .roots import SourceRoots
    from .service import AdapterAgent
    from .store import AdapterStore

    if args.engine_token_file is not None:
        engine_token = TokenSource(args.engine_token_file)
    elif os.environ.get("PEFT_ENGINE_TOKEN"):
        engine_token = TokenSource(env_var="PEFT_ENGINE_TOKEN")
    else:
        engine_token = TokenSource(args.token_file)
    return AdapterAgent(
        AdapterStore(args.adapter_root),
        EngineClient(args.engine_url, kind=args.engine, token=engine_token, timeout_s=args.engine_timeout),
        Compatibility(
            max_rank=args.max_rank,
            base_model_uri=args.base_model_uri,
            base_model_revision=args.base_model_revision,
            base_model_dir=args.base_model_dir,
        ),
        max_adapters=args.max_adapters,
        roots=SourceRoots.configure(args.pvc_root, args.file_root),
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from aiohttp import web

    from peft_runtime.common.http_edge import TokenSource

    from .app import create_app

    async def main() -> web.Application:
        return create_app(build_agent(args), TokenSource(args.token_file), args.keyring_file)

    web.run_app(main(), host=args.host, port=args.port, access_log=None, print=None)
    return 0
