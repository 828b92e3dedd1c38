"""Registers the sub-commands that live in their own modules (run, size, top)."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

# module name -> the function in it that adds its sub-parser; each takes the subparsers action
_COMMAND_MODULES = ["kubefit.cli.size", "kubefit.cli.run", "kubefit.cli.top"]


def register(commands: Any) -> None:
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # not written yet
        module.register(commands)


__all__ = ["register", "argparse"]
