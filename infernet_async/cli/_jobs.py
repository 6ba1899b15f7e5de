"""The ``jobs list|show|wait`` subcommand: your jobs, as a table, a summary or JSON.

Tables are for people (aligned columns, ``-`` for a missing value); ``--json`` is for scripts: the
SDK's ``Job`` as JSON, the same keys whichever dialect the control plane speaks (the live plane's
``model_name`` is ``model``), every documented field present (``null`` when the server left it
out), unknown fields kept.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from ._plumbing import (
    EXIT_OK,
    JSON_HELP,
    add_connection_arguments,
    cell,
    json_text,
    number,
    open_client,
    run,
    table,
    whole_number,
    write_out,
)

if TYPE_CHECKING:
    from ..models import Job

__all__ = ["register"]

# Each command's embedded control plane is a new one: the jobs of an earlier command are not there.
_EMPTY_PLANE = (
    "it starts empty, so it holds no job of an earlier command: 'infernet-async serve' keeps one "
    "running (export the variables it prints)"
)


def _positive_float(text: str) -> float:
    value = number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value:g}")
    return value


def _limit(text: str) -> int:
    return whole_number(text, high=100)


def _finish(
    parser: argparse.ArgumentParser,
    action: Callable[[argparse.Namespace], Coroutine[Any, Any, int]],
) -> None:
    """Every action's last arguments (``--json``, the connection) and its handler."""
    parser.add_argument("--json", action="store_true", help=JSON_HELP)
    add_connection_arguments(parser)
    parser.set_defaults(handler=lambda args: run(lambda: action(args)))


def register(subparsers: Any) -> None:
    """Add ``jobs`` to the ``infernet-async`` command line."""
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
    _finish(list_, _jobs_list)

    show = actions.add_parser("show", help="one job's status and result")
    show.add_argument("job_id", metavar="JOB_ID")
    _finish(show, _jobs_show)

    wait = actions.add_parser("wait", help="wait for a job to finish, then show it")
    wait.add_argument("job_id", metavar="JOB_ID")
    wait.add_argument(
        "--timeout", type=_positive_float, metavar="S", help="give up after S seconds"
    )
    wait.add_argument(
        "--poll-interval", type=_positive_float, default=0.5, metavar="S", help="first poll delay"
    )
    _finish(wait, _jobs_wait)


async def _jobs_list(args: argparse.Namespace) -> int:
    async with open_client(args, embedded_caveat=_EMPTY_PLANE) as client:
        jobs = await client.list_jobs(limit=args.limit, status=args.status, since=args.since)
    if args.json:
        write_out(json_text({"jobs": [j.model_dump(mode="json") for j in jobs]}))
    else:
        rows = [(j.id, j.status, j.model, j.created_at) for j in jobs]
        write_out(table(("ID", "STATUS", "MODEL", "CREATED"), rows))
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
            ("tokens", f"{cell(usage.prompt_tokens)} in, {cell(usage.completion_tokens)} out")
        )
    if job.error is not None or job.error_message is not None:
        fields.append(("error", f"{cell(job.error)}: {cell(job.error_message)}"))
    text = "".join(f"{name + ':':<11}{cell(value)}\n" for name, value in fields)
    if job.result is not None and job.result.content:
        content = job.result.content
        text += "\n" + content + ("" if content.endswith("\n") else "\n")
    return text


async def _jobs_show(args: argparse.Namespace) -> int:
    async with open_client(args, embedded_caveat=_EMPTY_PLANE) as client:
        job = await client.get_job(args.job_id)
    write_out(json_text(job.model_dump(mode="json")) if args.json else _describe_job(job))
    return EXIT_OK


async def _jobs_wait(args: argparse.Namespace) -> int:
    async with open_client(args, embedded_caveat=_EMPTY_PLANE) as client:
        job = await client.wait_job(
            args.job_id,
            poll_interval=args.poll_interval,
            max_poll_interval=max(args.poll_interval, 5.0),
            timeout=args.timeout,
        )
    write_out(json_text(job.model_dump(mode="json")) if args.json else _describe_job(job))
    return EXIT_OK
