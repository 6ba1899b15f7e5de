"""The ``models`` subcommand: the models that have an online node, as a table or JSON.

The table is for people (aligned columns, ``-`` for a missing value); ``--json`` is for scripts:
the SDK's ``ModelInfo`` as JSON, the same keys whichever dialect the control plane speaks.
"""

from __future__ import annotations

import argparse
from typing import Any

from ._plumbing import (
    EXIT_OK,
    JSON_HELP,
    add_command,
    add_connection_arguments,
    json_text,
    open_client,
    run,
    table,
    write_out,
)

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``models`` to the ``infernet-async`` command line."""
    models = add_command(
        subparsers,
        "models",
        lambda args: run(lambda: _models(args)),
        help="list the models that have an online node",
    )
    models.add_argument("--json", action="store_true", help=JSON_HELP)
    add_connection_arguments(models)


async def _models(args: argparse.Namespace) -> int:
    async with open_client(args) as client:
        models = await client.list_models()
    if args.json:
        write_out(json_text({"models": [m.model_dump(mode="json") for m in models]}))
    else:
        rows = [(m.id, m.nodes, m.avg_tokens_per_second) for m in models]
        write_out(table(("MODEL", "NODES", "TOKENS/S"), rows))
    return EXIT_OK
