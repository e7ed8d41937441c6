"""The `local train` subcommand: argparse only; `local.py` (and torch, through the trainer) loads when it runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

# --output: a progress bar with the preflight summary, or JSON lines on stdout; auto: a bar on a terminal.
OUTPUT_BAR = {"auto": None, "bar": True, "json": False}


def register(subcommands: Any) -> None:
    local = subcommands.add_parser("local", help="run a FineTuneJob on this machine, without a cluster")
    commands = local.add_subparsers(dest="local_command", required=True, metavar="COMMAND")
    train = commands.add_parser("train", help="train the adapter a FineTuneJob describes, on this machine")
    train.add_argument("-f", "--file", type=Path, required=True, help="FineTuneJob YAML (file:// or plain paths)")
    train.add_argument("--work-dir", type=Path, default=None, help="scratch directory (default: a temp dir)")
    train.add_argument("--merge", action="store_true", help="also write a merged full model to <output>/merged")
    train.add_argument(
        "--output",
        choices=sorted(OUTPUT_BAR),
        default="auto",
        help="bar: progress bar and dataset summary on stderr; json: one JSON event per line on stdout; "
        "auto (default): bar on a terminal, else json",
    )
    train.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .local import train_local

    # train_local raises SystemExit with the trainer's exit code on failure.
    train_local(args.file, work_dir=args.work_dir, merge=args.merge, progress_bar=OUTPUT_BAR[args.output])
    return 0
