"""The ``infernet-async batch`` subcommand: a JSONL file of requests through a bounded fan-out.

Rules: outcomes go to the output file, everything for people (the progress bar, notices, the
summary) to stderr. With neither ``INFERNET_BASE_URL`` nor ``INFERNET_BEARER_TOKEN`` set, the
command runs on the embedded control plane (``DevServer``) and says so, like ``chat``. Exit codes:
0 every job succeeded, 1 some failed (their lines say why), 2 bad usage, 130 interrupted (run the
same command again to resume).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ._batch import (
    BatchDefaults,
    BatchSummary,
    InvalidLine,
    count_pending,
    default_output_path,
    run_batch,
    scan_output,
)
from ._cli_chat import DEFAULT_MODEL, MODEL_ENV
from ._cli_common import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    add_connection_arguments,
    notice,
    open_client,
    positive_int,
    run,
)
from ._fanout import BatchOutcome

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``batch`` subcommand to the ``infernet-async`` parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "batch",
        help="run a JSONL file of requests, many at once, resumably",
        description=(
            "Run one job per line of INPUT (a JSON object with 'prompt' or 'messages', and "
            "optionally 'id', 'model', 'max_tokens', 'temperature', 'top_p', 'node_id', "
            "'metadata'), at most --concurrency at once, sharing one rate limiter. Each outcome "
            "is appended to OUTPUT as one JSON line the moment its job ends; running the same "
            "command again skips the ids already there. A line without 'id' is named line-N. "
            "With no INFERNET_BASE_URL and no INFERNET_BEARER_TOKEN, it runs on an embedded "
            "local control plane."
        ),
    )
    parser.add_argument("input", type=Path, help="the JSONL file of requests")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        help="the JSONL file of outcomes (default: INPUT with .out before the extension)",
    )
    parser.add_argument(
        "-c", "--concurrency", type=positive_int, default=32, help="jobs at once (default 32)"
    )
    parser.add_argument(
        "-m",
        "--model",
        help=f"the model for lines without one (default ${MODEL_ENV} or {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--max-tokens", type=positive_int, metavar="N", help="max_tokens for lines without one"
    )
    parser.add_argument(
        "--temperature", type=float, metavar="T", help="temperature for lines without one"
    )
    parser.add_argument(
        "--max-attempts",
        type=positive_int,
        default=3,
        metavar="N",
        help="submissions per job when the control plane refused it (default 3)",
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="run again the ids whose earlier outcome is an error",
    )
    progress = parser.add_mutually_exclusive_group()
    progress.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="show the progress bar even when stderr is not a terminal",
    )
    progress.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar"
    )
    add_connection_arguments(parser)
    parser.set_defaults(handler=_handle)


class _ProgressBar:
    """tqdm's bar with the ok and failed counts, tokens/s and (from the total) the ETA."""

    def __init__(self, total: int, summary: BatchSummary, *, enabled: bool) -> None:
        from tqdm import tqdm

        self._summary = summary
        self._bar = tqdm(
            total=total,
            unit="job",
            file=sys.stderr,
            disable=not enabled,
            dynamic_ncols=True,
            smoothing=0.05,
        )

    def job_done(self, outcome: BatchOutcome | InvalidLine) -> None:
        summary = self._summary
        self._bar.set_postfix(
            ok=summary.ok,
            failed=summary.failed + summary.invalid,
            tokens_s=f"{summary.tokens_per_second:.0f}",
            refresh=False,
        )
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()


def _handle(args: argparse.Namespace) -> int:
    input_path: Path = args.input
    if not input_path.is_file():
        notice(f"no such input file: {input_path}")
        return EXIT_USAGE
    output: Path = args.output or default_output_path(input_path)
    if output.exists() and output.resolve() == input_path.resolve():
        notice("the output file must not be the input file")
        return EXIT_USAGE
    resume = scan_output(output, retry_failed=args.retry_failed)
    if resume.torn_bytes:
        notice(f"cut a torn last line ({resume.torn_bytes} bytes) off {output}")
    if resume.corrupt:
        notice(f"{resume.corrupt} line(s) of {output} are not JSON objects; kept as they are")
    total, skipped = count_pending(input_path, resume.done)
    if skipped:
        notice(f"resuming: {skipped} request(s) already have an outcome in {output}")
    defaults = BatchDefaults(
        args.model or os.environ.get(MODEL_ENV) or DEFAULT_MODEL,
        args.max_tokens,
        args.temperature,
    )
    summary = BatchSummary(skipped=skipped)
    if not total:
        notice(summary.describe(output))
        return EXIT_OK
    enabled = args.progress if args.progress is not None else sys.stderr.isatty()

    async def main() -> int:
        bar = _ProgressBar(total, summary, enabled=enabled)
        finished = False
        try:
            async with open_client(args) as client:
                await run_batch(
                    client,
                    input_path,
                    output,
                    concurrency=args.concurrency,
                    max_attempts=args.max_attempts,
                    defaults=defaults,
                    resume=resume,
                    summary=summary,
                    progress=bar,
                )
            finished = True
        finally:
            bar.close()
            notice(summary.describe(output))
            if not finished:
                notice("stopped early: run the same command again to resume")
        return EXIT_OK if summary.failed + summary.invalid == 0 else EXIT_ERROR

    return run(main)
