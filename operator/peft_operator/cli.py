"""`peft-operator`: run the operator, generate CRDs, or run a FineTuneJob locally (no cluster)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path


def _crds(args: argparse.Namespace) -> None:
    from . import crdgen

    crdgen.main([str(d) for d in args.out])


def _run(args: argparse.Namespace) -> None:
    from . import runner

    runner.main(verbose=args.verbose)


# --output: a progress bar with the preflight summary, or JSON lines on stdout; auto: a bar on a terminal.
OUTPUT_BAR = {"auto": None, "bar": True, "json": False}


def _local_train(args: argparse.Namespace) -> None:
    # The runtime package brings torch; only local mode needs it on this side.
    from peft_runtime.local import train_local

    train_local(args.file, work_dir=args.work_dir, merge=args.merge, progress_bar=OUTPUT_BAR[args.output])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="peft-operator", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the operator (configured by PEFT_* environment variables)")
    run.add_argument("--verbose", action="store_true")
    run.set_defaults(run=_run)

    crds = commands.add_parser("crds", help="write the CRDs generated from the API models")
    crds.add_argument("out", nargs="+", type=Path)
    crds.set_defaults(run=_crds)

    local = commands.add_parser("local", help="run on this machine, without a cluster").add_subparsers(
        dest="local_command", required=True
    )
    train = local.add_parser("train", help="train the adapter a FineTuneJob describes, on this machine")
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
    train.set_defaults(run=_local_train)

    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
