"""The ``infernet-async batch`` subcommand: a JSONL file of requests through a bounded fan-out.

Rules: outcomes go to the output file, everything for people (the progress bar, notices, the
summary) to stderr. With neither ``INFERNET_BASE_URL`` nor ``INFERNET_BEARER_TOKEN`` set, the
command runs on the embedded control plane (``DevServer``) and says so, like ``chat``. Exit codes:
0 every job succeeded, 1 some failed (their lines say why), 2 bad usage, 130 interrupted (run the
same command again to resume).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any

from .._fanout import BatchOutcome
from ._batch_files import (
    BatchDefaults,
    BatchSummary,
    InvalidLine,
    count_pending,
    default_output_path,
    run_batch,
    scan_output,
)
from ._plumbing import (
    DEFAULT_MODEL,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    MODEL_ENV,
    UsageError,
    add_answer_arguments,
    add_command,
    add_connection_arguments,
    notice,
    open_client,
    positive_int,
    run,
)

__all__ = ["register"]

_HELP = "run a JSONL file of requests, many at once, resumably"
_DESCRIPTION = (
    "Run one job per line of INPUT (a JSON object with 'prompt' or 'messages', and "
    "optionally 'id', 'model', 'max_tokens', 'temperature', 'top_p', 'node_id', "
    "'metadata'), at most --concurrency at once, sharing one rate limiter. Each outcome "
    "is appended to OUTPUT as one JSON line the moment its job ends; running the same "
    "command again skips the ids already there. A line without 'id' is named line-N. "
    "With no INFERNET_BASE_URL and no INFERNET_BEARER_TOKEN, it runs on an embedded "
    "local control plane."
)


def _rate(text: str) -> float:
    """``N``, ``N/s`` or ``N/m``, as requests a second."""
    number, _, unit = text.strip().partition("/")
    per = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0}.get(unit.strip().lower())
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    if per is None or not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected N, N/s or N/m with N > 0, got {text!r}")
    return value / per


def register(subparsers: Any) -> None:
    """Add the ``batch`` subcommand to the ``infernet-async`` parser."""
    parser = add_command(subparsers, "batch", _handle, help=_HELP, description=_DESCRIPTION)
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
    add_answer_arguments(
        parser,
        max_tokens_help="max_tokens for lines without one",
        temperature_help="temperature (0.0 to 2.0) for lines without one",
    )
    parser.add_argument(
        "--max-attempts",
        type=positive_int,
        default=3,
        metavar="N",
        help=(
            "attempts per job when the control plane refused it (default 3; each attempt is also "
            "retried by the client's retry policy, twice by default)"
        ),
    )
    parser.add_argument(
        "--rate",
        type=_rate,
        metavar="N[/s|/m]",
        help=(
            "at most N submissions a second (N/s) or a minute (N/m); default: as fast as the "
            "server's rate-limit budget allows"
        ),
    )
    parser.add_argument(
        "--burst",
        type=positive_int,
        default=1,
        metavar="N",
        help="with --rate: how many may go back to back (default 1)",
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


def _input_problem(path: Path) -> str | None:
    if not path.exists():
        return f"no such input file: {path}"
    if path.is_dir():
        return f"the input is a directory, not a JSONL file: {path}"
    if not path.is_file():
        # It is read twice (to count the jobs, then to run them), which a pipe cannot do.
        return f"the input must be a regular file: {path}"
    return None


def _output_problem(output: Path, input_path: Path) -> str | None:
    if output.is_dir():
        return f"the output is a directory, not a file: {output} (name a file with -o)"
    if not output.parent.is_dir():
        return f"no such directory for the output: {output.parent}"
    if output.exists() and output.samefile(input_path):
        return "the output file must not be the input file"
    return None


def _handle(args: argparse.Namespace) -> int:
    # Every problem with the files is found here, before the control plane is started: a rerun
    # would meet it again, so it is bad usage, not an interrupted run.
    input_path: Path = args.input
    output: Path = args.output or default_output_path(input_path)
    problem = _input_problem(input_path) or _output_problem(output, input_path)
    if problem is not None:
        notice(problem)
        return EXIT_USAGE
    try:
        resume = scan_output(output, retry_failed=args.retry_failed)
    except OSError as exc:
        notice(f"cannot write the output file {output}: {exc.strerror or exc}")
        return EXIT_USAGE
    if resume.torn_bytes:
        notice(f"cut a torn last line ({resume.torn_bytes} bytes) off {output}")
    if resume.corrupt:
        notice(f"{resume.corrupt} line(s) of {output} are not JSON objects; kept as they are")
    try:
        total, skipped = count_pending(input_path, resume.done)
    except OSError as exc:
        notice(f"cannot read the input file {input_path}: {exc.strerror or exc}")
        return EXIT_USAGE
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
    try:
        # Created now if new: a file that cannot be written fails before any job is paid for.
        output.open("a", encoding="utf-8").close()
    except OSError as exc:
        notice(f"cannot write the output file {output}: {exc.strerror or exc}")
        return EXIT_USAGE
    enabled = args.progress if args.progress is not None else sys.stderr.isatty()

    async def main() -> int:
        bar: _ProgressBar | None = None
        finished = usage_error = False
        try:
            async with open_client(args) as client:
                # Drawn once the client is open: the embedded control plane's notice comes first,
                # on a line of its own.
                bar = _ProgressBar(total, summary, enabled=enabled)
                await run_batch(
                    client,
                    input_path,
                    output,
                    concurrency=args.concurrency,
                    max_attempts=args.max_attempts,
                    rate=args.rate,
                    burst=args.burst,
                    defaults=defaults,
                    resume=resume,
                    summary=summary,
                    progress=bar,
                )
            finished = True
        except UsageError:
            # A setting the client refused: nothing ran, and a rerun would meet it again.
            usage_error = True
            raise
        finally:
            if bar is not None:
                bar.close()
            if not usage_error:
                notice(summary.describe(output))
            if not (finished or usage_error):
                notice("stopped early: run the same command again to resume")
        return EXIT_OK if summary.failed + summary.invalid == 0 else EXIT_ERROR

    return run(main)
