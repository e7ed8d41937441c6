"""The `serve` subcommand: argparse only; torch is imported when `serve` runs."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from ..common.options import add_adapter_checks, add_http_options, add_pvc_root


def register(subcommands: Any) -> None:
    parser = subcommands.add_parser(
        "serve",
        help="serve a base model and hot-loaded adapters (OpenAI-compatible)",
        description=(
            "Serve one base model and many adapters of any method the trainer produces (lora, qlora, dora, ia3, "
            "prefix, prompt, adapter), loaded and unloaded at run time through vLLM's /v1/load_lora_adapter "
            "protocol and mixed in one batch."
        ),
    )
    parser.add_argument(
        "--model",
        required=True,
        help="the base model: a local directory, or a file://, pvc://, s3:// or hf:// URI (downloaded at start-up)",
    )
    parser.add_argument("--revision", help="revision of an hf:// model")
    parser.add_argument(
        "--served-model-name", help="the base model's name in `model` (default: --model, without hf://, as vLLM)"
    )
    add_pvc_root(parser)
    add_http_options(parser, port=8000, token_help="bearer token for the load/unload API")
    add_adapter_checks(parser)
    parser.add_argument(
        "--max-resident",
        type=int,
        help="adapters held in memory at once; the others load on their next request (default: --max-adapters)",
    )
    parser.add_argument(
        "--resident-wait-seconds",
        type=float,
        default=30.0,
        help="how long a request for an evicted adapter waits for a free memory slot (default 30)",
    )
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH", help="load at start-up")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if present)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument("--max-batch-size", type=int, default=64, help="rows per forward step (default 64)")
    parser.add_argument("--batch-window-ms", type=float, default=5.0, help="wait for more requests when idle")
    parser.add_argument("--max-prefill-tokens", type=int, default=8192, help="prompt tokens prefilled at once")
    parser.add_argument("--default-max-tokens", type=int, default=256, help="chat completions without max_tokens")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.set_defaults(run=run)


def _adapters(values: list[str]) -> dict[str, Path]:
    adapters = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--adapter {value!r}: write NAME=PATH")
        adapters[name] = Path(path).resolve()
    return adapters


def resolve_model(model: str, revision: str | None, pvc_root: Path) -> Path:
    """The local directory of `--model` (a path, or a URI fetched like the trainer fetches it)."""
    if "://" not in model:
        return Path(model)
    import tempfile

    from peft_operator.api.plan import Mounts
    from peft_runtime.models import local_model_uri

    from ..common.storage import StorageError, fetch_model_dir

    uri = local_model_uri(model)  # the hf:// name of a model this project ships maps to its local copy
    scratch = Path(tempfile.mkdtemp(prefix="peft-serve-"))
    try:
        return fetch_model_dir(uri, revision, Mounts(pvc_root=str(pvc_root)), scratch)
    except StorageError as error:
        raise SystemExit(f"cannot serve --model {model}: {error}") from None


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from aiohttp import web

    from ..common.http_edge import TokenSource
    from .app import create_app
    from .engine import Engine, EngineConfig

    engine = Engine(
        EngineConfig(
            model_dir=resolve_model(args.model, args.revision, args.pvc_root),
            served_name=args.served_model_name or args.model.removeprefix("hf://"),
            base_model_uri=args.base_model_uri,
            base_model_revision=args.base_model_revision,
            device=args.device,
            dtype=args.dtype,
            max_adapters=args.max_adapters,
            max_resident=args.max_resident,
            resident_wait_s=args.resident_wait_seconds,
            max_rank=args.max_rank,
            max_batch_size=args.max_batch_size,
            batch_window_ms=args.batch_window_ms,
            max_prefill_tokens=args.max_prefill_tokens,
            default_max_tokens=args.default_max_tokens,
            threads=args.threads,
            adapters=_adapters(args.adapter),
        )
    ).start()
    try:
        web.run_app(
            create_app(engine, TokenSource(args.token_file)),
            host=args.host,
            port=args.port,
            access_log=None,
            print=None,
        )
    finally:
        engine.stop()
    return 0
