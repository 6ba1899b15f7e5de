"""The ``infernet-async`` command line.

Each subcommand lives in its own module with a ``register(subparsers)`` function that adds its
parser and sets ``handler`` (a function of the parsed arguments returning an exit code). This module
only wires them up, so ``main(argv)`` can be driven in-process by the tests.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

from ._version import __version__

__all__ = ["main"]

# Modules that provide subcommands, in the order ``--help`` lists them. Imported lazily so that
# ``infernet-async --version`` does not pay for aiohttp.web.
_COMMAND_MODULES: tuple[str, ...] = (
    "infernet_async._cli_chat",
    "infernet_async._cli_models_jobs",
    "infernet_async._cli_batch",
    "infernet_async.devserver._cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="infernet-async",
        description="Stream answers from the Infernet Protocol inference API.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in _COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    result: int = handler(args)
    return result
