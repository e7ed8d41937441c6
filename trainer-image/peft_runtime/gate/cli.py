"""The `gate` subcommand: argparse only (registered by peft_runtime.cli)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any


def register(subcommands: Any) -> None:
    parser = subcommands.add_parser(
        "gate",
        help="engine gate: the engine Service's port; forwards client routes to the engine, refuses admin ones",
        description=(
            "Listen where clients reach the engine and forward completions, chat completions, models, health and "
            "metrics to the engine on the pod's loopback; refuse its admin routes (runtime LoRA loading, caches, "
            "sleep, RPC) with 403 and anything else with 404, in OpenAI's error shape. With --keyring-file, a client "
            "needs an API key that grants the model it calls (401 without one, 403 for another model)."
        ),
    )
    parser.add_argument("--engine-url", default="http://127.0.0.1:8080", help="the engine, on the pod's loopback")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--keyring-file",
        type=Path,
        help=(
            "require API keys (access.apiKeys: Required): the keyring the adapter agent writes, sha256(key) -> "
            "models; reread when it changes; while it is missing every key is refused"
        ),
    )
    parser.add_argument("--log-level", default="INFO")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from aiohttp import web

    from .app import create_app

    web.run_app(
        create_app(args.engine_url, args.keyring_file), host=args.host, port=args.port, access_log=None, print=None
    )
    return 0
