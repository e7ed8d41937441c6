"""`peft-operator`: run the operator or generate CRDs. Local mode is the runtime's (`peft-runtime local train`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

# The operator never imports the runtime (torch): local training moved there, this only says where.
LOCAL_MOVED = "peft-operator local moved to the runtime: run `peft-runtime local train -f job.yaml` instead"


def _crds(args: argparse.Namespace) -> None:
    from . import crdgen

    crdgen.main([str(d) for d in args.out])


def _run(args: argparse.Namespace) -> None:
    from . import runner

    runner.main(verbose=args.verbose)


def _local_moved(_: argparse.Namespace) -> None:
    print(LOCAL_MOVED, file=sys.stderr)
    raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="peft-operator", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the operator (configured by PEFT_* environment variables)")
    run.add_argument("--verbose", action="store_true")
    run.set_defaults(run=_run)

    crds = commands.add_parser("crds", help="write the CRDs generated from the API models")
    crds.add_argument("out", nargs="+", type=Path)
    crds.set_defaults(run=_crds)

    # Any arguments after `local` are accepted so that old command lines get the pointer, not a usage error.
    local = commands.add_parser("local", help="moved: use `peft-runtime local train -f job.yaml`")
    local.add_argument("rest", nargs=argparse.REMAINDER)
    local.set_defaults(run=_local_moved)

    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
