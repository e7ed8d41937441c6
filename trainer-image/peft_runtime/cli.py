"""`peft-runtime`: one console script, one subcommand per module.

Convention: a subcommand module has `register(subcommands) -> None`, which adds its parser(s) to the
argparse sub-parsers and sets `run=<function(args) -> int>` as the default; the int is the exit code.
`register` must stay cheap (argparse only): heavy imports (torch, transformers) belong inside `run`.
A module listed in COMMAND_MODULES that is not present in this image is skipped, so each engineer adds
a module without touching anyone else's.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMAND_MODULES = (
    "peft_runtime.train.cli",  # train
    "peft_runtime.serving.cli",  # serve, agent
)


def _load(module_name: str) -> object | None:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        # Only a missing subcommand module (or its package) is skipped; a missing dependency is a real error.
        if error.name is not None and (module_name == error.name or module_name.startswith(error.name + ".")):
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peft-runtime", description="PEFT runtime: train, serve, agent.")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        module = _load(module_name)
        if module is not None:
            module.register(subcommands)  # type: ignore[attr-defined]
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
