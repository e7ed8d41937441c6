"""`peft-runtime`: one console script, one subcommand per module.

Convention: a subcommand module has `register(subcommands) -> None`, which adds its parser(s) to the
argparse sub-parsers and sets `run=<function(args) -> int>` as the default; the int is the exit code.
`register` must stay cheap (argparse only): heavy imports (torch, transformers) belong inside `run`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import local_cli  # local train
from .agent import cli as agent_cli  # agent
from .gate import cli as gate_cli  # gate
from .serving import cli as serving_cli  # serve
from .train import cli as train_cli  # train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peft-runtime", description="PEFT runtime: train, serve, agent, gate, local.")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (train_cli, serving_cli, agent_cli, gate_cli, local_cli):
        module.register(subcommands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
