"""The `kubefit` command: run | size | top | crd."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

Handler = Callable[[argparse.Namespace], int]


def _crd(args: argparse.Namespace) -> int:
    from kubefit.api.crd import crd_yaml

    text = crd_yaml()
    try:
        sys.stdout.write(text)
        sys.stdout.flush()  # a write error is raised here, not at the interpreter's exit
    except OSError as exc:
        # What is still buffered goes to /dev/null: the interpreter's last flush would fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if isinstance(exc, BrokenPipeError):  # `kubefit crd | head`: the reader left, nothing more to say
            return 0
        print(f"kubefit crd: cannot write the CRD: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubefit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    crd = commands.add_parser("crd", help="print the TrainingJob CustomResourceDefinition (YAML)")
    crd.set_defaults(handler=_crd)

    # Each sub-command module adds its own parser; imported lazily so `kubefit size` starts fast.
    from kubefit.cli import commands as extra

    extra.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    if sys.stdout is None and args.command != "run":  # started with stdout closed (`kubefit crd >&-`)
        print(f"kubefit {args.command}: standard output is closed: nothing can be printed", file=sys.stderr)
        return 1
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
