"""Command-line options `serve` and `agent` share, defined once so their names, defaults and help never
drift apart (they did: `--pvc-root` defaulted to /pvc in one and /mnt/pvc in the other)."""

from __future__ import annotations

import argparse
from pathlib import Path

from peft_operator.api.plan import PVC_MOUNT_ROOT


def add_http_options(parser: argparse.ArgumentParser, port: int, token_help: str) -> None:
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--token-file", type=Path, help=f"{token_help} (or PEFT_ADMIN_TOKEN)")
    parser.add_argument("--log-level", default="INFO")


def add_adapter_checks(parser: argparse.ArgumentParser) -> None:
    """What an adapter must match to be loaded: its base model, and the engine's limits."""
    parser.add_argument("--base-model-uri", help="refuse adapters whose manifest.json names another base model")
    parser.add_argument("--base-model-revision", help="refuse adapters trained on another revision")
    parser.add_argument("--max-adapters", type=int, default=32, help="adapters loaded at once (default 32)")
    parser.add_argument("--max-rank", type=int, default=64, help="highest LoRA rank accepted (default 64)")


def add_pvc_root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pvc-root",
        type=Path,
        default=Path(PVC_MOUNT_ROOT),
        help=f"where pvc://<claim>/ volumes are mounted (default {PVC_MOUNT_ROOT}, where the operator mounts them)",
    )
