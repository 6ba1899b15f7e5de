"""The ``infernet-async`` command line: ``main(argv)`` runs it in-process and returns the exit code.

One module per command (``_chat``, ``_models``, ``_jobs``, ``_batch``, ``_serve``), each with a
``register(subparsers)`` that adds its parser and sets ``handler`` (a function of the parsed
arguments returning an exit code); what they share lives once in ``_plumbing``, and the batch
file format (JSONL in, outcomes out, resumable) in ``_batch_files``. This module only wires them
up.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

from .._version import __version__
from ._plumbing import EXIT_USAGE

__all__ = ["main"]

# The command modules, in the order ``--help`` lists them. Imported when the parser is built, not
# with this package, and none of them imports aiohttp at the top: ``--version`` and ``--help`` stay
# cheap.
_COMMANDS: tuple[str, ...] = ("_chat", "_models", "_jobs", "_batch", "_serve")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="infernet-async",
        description="Stream answers from the Infernet Protocol inference API.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_USAGE
    result: int = handler(args)
    return result
