"""The ``models`` and ``jobs list|show|wait`` subcommands: the REST side of the API, as tables or
JSON.

Tables are for people (aligned columns, ``-`` for a missing value); ``--json`` is for scripts: the
SDK's models of the API's objects (``Job``, ``ModelInfo``) as JSON, the same keys whichever dialect
the control plane speaks (the live plane's ``model_name`` is ``model``), every documented field
present (``null`` when the server left it out), unknown fields kept.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ._cli_common import (
    EXIT_OK,
    add_connection_arguments,
    open_client,
    run,
    whole_number,
    write_out,
)

if TYPE_CHECKING:
    from .models import Job

__all__ = ["register"]

_JSON_HELP = "print JSON: the SDK's models, the same keys on every control plane"
# Each command's embedded control plane is a new one: the jobs of an earlier command are not there.
_EMPTY_PLANE = (
    "it starts empty, so it holds no job of an earlier command: 'infernet-async serve' keeps one "
    "running (export the variables it prints)"
)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value:g}")
    return value


def _limit(text: str) -> int:
    return whole_number(text, high=100)


def register(subparsers: Any) -> None:
    """Add ``models`` and ``jobs`` to the ``infernet-async`` command line."""
    models: argparse.ArgumentParser = subparsers.add_parser(
        "models", help="list the models that have an online node"
    )
    models.add_argument("--json", action="store_true", help=_JSON_HELP)
    add_connection_arguments(models)
    models.set_defaults(handler=lambda args: run(lambda: _models(args)))

    jobs: argparse.ArgumentParser = subparsers.add_parser(
        "jobs", help="list, show or wait for your jobs"
    )
    actions = jobs.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)

    list_ = actions.add_parser("list", help="your recent jobs, newest first")
    list_.add_argument("--limit", type=_limit, default=20, metavar="N", help="1..100 (default 20)")
    list_.add_argument(
        "--status", choices=("pending", "processing", "completed", "failed"), help="filter"
    )
    list_.add_argument("--since", metavar="ISO8601", help="only jobs created after this time")
    list_.add_argument("--json", action="store_true", help=_JSON_HELP)
    add_connection_arguments(list_)
    list_.set_defaults(handler=lambda args: run(lambda: _jobs_list(args)))

    show = actions.add_parser("show", help="one job's status and result")
    show.add_argument("job_id", metavar="JOB_ID")
    show.add_argument("--json", action="store_true", help=_JSON_HELP)
    add_connection_arguments(show)
    show.set_defaults(handler=lambda args: run(lambda: _jobs_show(args)))

    wait = actions.add_parser("wait", help="wait for a job to finish, then show it")
    wait.add_argument("job_id", metavar="JOB_ID")
    wait.add_argument(
        "--timeout", type=_positive_float, metavar="S", help="give up after S seconds"
    )
    wait.add_argument(
        "--poll-interval", type=_positive_float, default=0.5, metavar="S", help="first poll delay"
    )
    wait.add_argument("--json", action="store_true", help=_JSON_HELP)
    add_connection_arguments(wait)
    wait.set_defaults(handler=lambda args: run(lambda: _jobs_wait(args)))


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    if hasattr(value, "isoformat"):
        return str(value.isoformat(timespec="seconds"))
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(header)] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines) + "\n"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2) + "\n"


async def _models(args: argparse.Namespace) -> int:
    async with open_client(args) as client:
        models = await client.list_models()
    if args.json:
        write_out(_json({"models": [m.model_dump(mode="json") for m in models]}))
    else:
        rows = [(m.id, m.nodes, m.avg_tokens_per_second) for m in models]
        write_out(_table(("MODEL", "NODES", "TOKENS/S"), rows))
    return EXIT_OK


async def _jobs_list(args: argparse.Namespace) -> int:
    async with open_client(args, embedded_caveat=_EMPTY_PLANE) as client:
        jobs = await client.list_jobs(limit=args.limit, status=args.status, since=args.since)
    if args.json:
        write_out(_json({"jobs": [j.model_dump(mode="json") for j in jobs]}))
    else:
        rows = [(j.id, j.status, j.model, j.created_at) for j in jobs]
        write_out(_table(("ID", "STATUS", "MODEL", "CREATED"), rows))
    return EXIT_OK


def _describe_job(job: Job) -> str:
    fields: list[tuple[str, object]] = [
        ("id", job.id),
        ("status", job.status),
        ("model", job.model),
        ("created", job.created_at),
    ]
    if job.node_id is not None:
        fields.append(("node", job.node_id))
    if job.completed_at is not None:
        fields.append(("completed", job.completed_at))
    if job.latency_ms is not None:
        fields.append(("latency", f"{job.latency_ms:g} ms"))
    if job.result is not None and job.result.usage is not None:
        usage = job.result.usage
        fields.append(
            ("tokens", f"{_cell(usage.prompt_tokens)} in, {_cell(usage.completion_tokens)} out")
        )
    if job.error is not None or job.error_message is not None:
        fields.append(("error", f"{_cell(job.error)}: {_cell(job.error_message)}"))
    text = "".join(f"{name + ':':<11}{_cell(value)}\n" for name, value in fields)
    if job.result is not None and job.result.content:
        content = job.result.content
        text += "\n" + content + ("" if content.endswith("\n") else "\n")
    return text


async def _jobs_show(args: argparse.Namespace) -> int:
    async with open_client(args, embedded_caveat=_EMPTY_PLANE) as client:
        job = await client.get_job(args.job_id)
    write_out(_json(job.model_dump(mode="json")) if args.json else _describe_job(job))
    return EXIT_OK


async def _jobs_wait(args: argparse.Namespace) -> int:
    async with open_client(args, embedded_caveat=_EMPTY_PLANE) as client:
        job = await client.wait_job(
            args.job_id,
            poll_interval=args.poll_interval,
            max_poll_interval=max(args.poll_interval, 5.0),
            timeout=args.timeout,
        )
    write_out(_json(job.model_dump(mode="json")) if args.json else _describe_job(job))
    return EXIT_OK
