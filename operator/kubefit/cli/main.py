"""The `kubefit` command: run | size | top | crd."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

Handler = Callable[[argparse.Namespace], int]


def _crd(args: argparse.Namespace) -> int:
    from kubefit.api.crd import crd_yaml

    sys.stdout.write(crd_yaml())
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
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
