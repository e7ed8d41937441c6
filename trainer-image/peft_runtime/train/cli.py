"""The `train` subcommand: argparse only; the work (and torch) is imported when it runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(subcommands: Any) -> None:
    parser = subcommands.add_parser(
        "train", help="train one adapter from a training plan", description="Train one PEFT adapter."
    )
    parser.add_argument("--plan", type=Path, required=True, help="the TrainingPlan JSON (plan.json)")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="also write a merged full model to <output>/merged (lora, dora, qlora, ia3)",
    )
    parser.add_argument(
        "--progress-bar",
        choices=("auto", "always", "never"),
        default="auto",
        help="tqdm bar on stderr (auto: when stderr is a terminal)",
    )
    parser.set_defaults(run=run)
    checks = subcommands.add_parser(
        "preflight",
        help="check a training plan without training (CPU only)",
        description="Read the dataset and run its preflight, load the tokenizer and the model config, and attach "
        "the adapter to the model built on the meta device (no weights) to check the target modules. The operator "
        "runs this as a CPU-only Job before it requests GPUs.",
    )
    checks.add_argument("--plan", type=Path, required=True, help="the TrainingPlan JSON (plan.json)")
    checks.set_defaults(run=run_preflight)
    rendezvous = subcommands.add_parser(
        "await-rendezvous",
        help="wait until a multi-node run's rendezvous host resolves",
        description="Wait until HOST resolves in DNS (the init container of a multi-node training pod).",
    )
    rendezvous.add_argument("host", help="the rendezvous host, pod 0 of the training Job")
    rendezvous.add_argument("--timeout", type=float, default=600.0, help="seconds to wait (default 600)")
    rendezvous.set_defaults(run=run_await_rendezvous)


def run(args: argparse.Namespace) -> int:
    from .run import load_plan, run_plan

    plan = load_plan(args.plan)
    if plan is None:
        return 3
    bar = {"auto": sys.stderr.isatty(), "always": True, "never": False}[args.progress_bar]
    return run_plan(plan, merge=args.merge, progress_bar=bar)


def run_preflight(args: argparse.Namespace) -> int:
    from .run import load_plan, run_plan

    plan = load_plan(args.plan)
    return 3 if plan is None else run_plan(plan, preflight_only=True)


def run_await_rendezvous(args: argparse.Namespace) -> int:
    from .rendezvous import await_host

    return await_host(args.host, args.timeout)
