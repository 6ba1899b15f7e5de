"""Batch files: JSONL requests in, JSONL outcomes out, resumable after a crash or a kill.

Rules: the input is read lazily, one line per free slot; each outcome line is written and flushed
the moment its job ends, so a kill loses only the jobs in flight. Re-running skips the ids already
in the output (a line without an ``id`` is named ``line-N``, its 1-based line number). A torn last
line (a kill mid-write) is cut off before anything is appended; in the output the last line for an
id wins. Jobs cancelled by an interrupt are written with ``"status": "cancelled"`` and their partial
text, and run again on the next run.

A line whose id an earlier line already has is not run: its error line is written under the line's
own name, ``line-N``, with ``"duplicate_of": "<id>"``, so it never reads as the outcome of that id
(``"id": null`` if the line's id is itself ``line-N``). The input is UTF-8, with or without a BOM;
a line that is not UTF-8 is an error line (``line-N``) and the other lines run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from pydantic import ValidationError

from .._fanout import BatchOutcome, BatchRequest, FanOut, Requests

__all__ = [
    "BatchDefaults",
    "BatchSummary",
    "InvalidLine",
    "OutcomeWriter",
    "ResumeState",
    "count_pending",
    "default_output_path",
    "iter_requests",
    "outcome_line",
    "run_batch",
    "scan_output",
]


@dataclass(frozen=True, slots=True)
class BatchDefaults:
    """Values for the fields an input line leaves out (``--model``, ``--max-tokens``...)."""

    model: str
    max_tokens: int | None = None
    temperature: float | None = None


@dataclass(slots=True)
class ResumeState:
    """What an earlier run left in the output file."""

    done: set[str] = field(default_factory=set)  # ids not to run again
    lines: int = 0  # good lines kept
    corrupt: int = 0  # complete lines that are not JSON objects (kept, reported)
    torn_bytes: int = 0  # bytes of a torn last line, cut off


def scan_output(path: Path, *, retry_failed: bool = False) -> ResumeState:
    """Read an earlier run's output; cut off a torn last line so appending keeps valid JSONL.

    An id is done when a line says ``ok``, or ``error`` unless ``retry_failed``; ``cancelled``
    jobs always run again.
    """
    state = ResumeState()
    if not path.exists():
        return state
    rerun = {"cancelled", "error"} if retry_failed else {"cancelled"}
    good_end = 0
    with path.open("rb+") as file:
        for raw in file:
            if not raw.endswith(b"\n"):
                # Only the last line can lack its newline: the write was cut short by a kill.
                state.torn_bytes = len(raw)
                file.truncate(good_end)
                break
            good_end += len(raw)
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except ValueError:
                state.corrupt += 1
                continue
            if not isinstance(line, dict):
                state.corrupt += 1
                continue
            state.lines += 1
            outcome_id = line.get("id")
            if isinstance(outcome_id, str | int) and line.get("status") not in rerun:
                state.done.add(str(outcome_id))
    return state


@dataclass(frozen=True, slots=True)
class InvalidLine:
    """An input line that is not a valid request: written to the output as an error, not run."""

    line: int
    id: str | None  # None: a duplicate whose own name is the id it repeats
    message: str
    duplicate_of: str | None = None

    def to_json(self) -> dict[str, Any]:
        line: dict[str, Any] = {"id": self.id, "line": self.line, "status": "error"}
        if self.duplicate_of is not None:
            line["duplicate_of"] = self.duplicate_of
        line["text"] = ""
        line["error"] = {"type": "InvalidRequest", "message": self.message}
        return line


def _read_lines(path: Path) -> Iterator[tuple[int, str | None]]:
    """The non-blank lines of ``path`` with their numbers; ``None`` for a line that is not UTF-8.

    Undecodable bytes are carried through as lone surrogates so that one bad line costs only
    itself, and are spotted per line; a BOM (Windows editors add one) is dropped.
    """
    with path.open(encoding="utf-8-sig", errors="surrogateescape") as file:
        for line_no, raw in enumerate(file, start=1):
            if not raw.strip():
                continue
            try:
                raw.encode("utf-8")
            except UnicodeEncodeError:
                yield line_no, None
                continue
            # A BOM inside the file: what `cat a.jsonl b.jsonl` makes of two files saved with one.
            yield line_no, raw.removeprefix("\ufeff")


def _not_utf8(line_no: int) -> InvalidLine:
    return InvalidLine(line_no, f"line-{line_no}", "not UTF-8: save the file as UTF-8")


def _request_id(data: Any, line_no: int) -> str:
    """A line's id: its ``id`` field (a string or a number), else ``line-N``."""
    raw_id = data.get("id") if isinstance(data, dict) else None
    if isinstance(raw_id, str | int) and raw_id != "":
        return str(raw_id)
    return f"line-{line_no}"


def _is_text(data: Any) -> bool:
    """Whether ``data`` can be written as UTF-8: JSON escapes can spell lone surrogates."""
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _parse_line(raw: str, line_no: int, defaults: BatchDefaults) -> BatchRequest | InvalidLine:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        return InvalidLine(line_no, f"line-{line_no}", f"not JSON: {exc}")
    if not isinstance(data, dict):
        return InvalidLine(line_no, f"line-{line_no}", "a line must hold a JSON object")
    data["id"] = _request_id(data, line_no)
    if not _is_text(data):
        return InvalidLine(line_no, data["id"], "holds a lone surrogate escape (\\udXXX), not text")
    data.setdefault("model", defaults.model)
    if defaults.max_tokens is not None:
        data.setdefault("max_tokens", defaults.max_tokens)
    if defaults.temperature is not None:
        data.setdefault("temperature", defaults.temperature)
    try:
        return BatchRequest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'line'}: "
            f"{error['msg'].removeprefix('Value error, ')}"
            for error in exc.errors()
        )
        return InvalidLine(line_no, data["id"], problems)


def iter_requests(
    path: Path,
    defaults: BatchDefaults,
    *,
    skip: set[str],
    on_invalid: Callable[[InvalidLine], None],
    on_line: Callable[[BatchRequest, int], None] | None = None,
) -> Iterator[BatchRequest]:
    """The requests of a JSONL file, lazily, without those whose id is in ``skip``.

    Invalid lines go to ``on_invalid`` instead; an id seen twice is reported there too, under the
    line's own name (see the module docstring). ``on_line`` learns the line number of each request
    yielded.
    """
    seen: set[str] = set()
    for line_no, raw in _read_lines(path):
        parsed = _not_utf8(line_no) if raw is None else _parse_line(raw, line_no, defaults)
        request_id = parsed.id or f"line-{line_no}"
        if request_id in skip:
            continue
        if request_id in seen:
            own_name = f"line-{line_no}"
            on_invalid(
                InvalidLine(
                    line_no,
                    own_name if own_name != request_id else None,
                    f"duplicate id {request_id!r}: an earlier line has it; this line was not run",
                    duplicate_of=request_id,
                )
            )
            continue
        seen.add(request_id)
        if isinstance(parsed, InvalidLine):
            on_invalid(parsed)
            continue
        if on_line is not None:
            on_line(parsed, line_no)
        yield parsed


def count_pending(path: Path, skip: set[str]) -> tuple[int, int]:
    """Lines of the input this run will handle, and lines it skips (for the bar's total and ETA)."""
    pending = skipped = 0
    for line_no, raw in _read_lines(path):
        try:
            data = None if raw is None else json.loads(raw)
        except ValueError:
            data = None
        if _request_id(data, line_no) in skip:
            skipped += 1
        else:
            pending += 1
    return pending, skipped


class OutcomeWriter:
    """Appends one JSON line per outcome and flushes it at once (a crash loses nothing written)."""

    def __init__(self, path: Path) -> None:
        # Line-buffered text would flush per line too; an explicit flush says it is the point.
        self._file: IO[str] = path.open("a", encoding="utf-8")

    def write(self, line: dict[str, Any]) -> None:
        text = json.dumps(line, ensure_ascii=False, separators=(",", ":"))
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate (an answer can spell one in a JSON escape) has no UTF-8 form;
            # escaped, the line is still the same JSON, and the run goes on.
            text = json.dumps(line, separators=(",", ":"))
        self._file.write(text + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> OutcomeWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def outcome_line(outcome: BatchOutcome, line_no: int | None) -> dict[str, Any]:
    """The output line of an outcome: the id, the input line number and the status up front."""
    line: dict[str, Any] = {"id": outcome.id, "line": line_no, "status": outcome.status}
    line.update(outcome.model_dump(mode="json", exclude={"request"}))
    line["request"] = outcome.request.model_dump(mode="json", exclude_none=True)
    return line


class Progress(Protocol):
    """What ``run_batch`` reports to: a progress bar, or nothing."""

    def job_done(self, outcome: BatchOutcome | InvalidLine) -> None: ...


@dataclass(slots=True)
class BatchSummary:
    """The figures of one run, for the closing line."""

    ok: int = 0
    failed: int = 0
    cancelled: int = 0
    invalid: int = 0
    skipped: int = 0
    tokens: int = 0
    started: float = field(default_factory=time.perf_counter)
    ended: float | None = None

    @property
    def elapsed(self) -> float:
        return (self.ended if self.ended is not None else time.perf_counter()) - self.started

    @property
    def tokens_per_second(self) -> float:
        elapsed = self.elapsed
        return self.tokens / elapsed if elapsed > 0 else 0.0

    def describe(self, output: Path) -> str:
        parts = [f"{self.ok} ok", f"{self.failed + self.invalid} failed"]
        if self.cancelled:
            parts.append(f"{self.cancelled} cancelled")
        if self.skipped:
            parts.append(f"{self.skipped} skipped (already in {output})")
        return (
            f"batch: {', '.join(parts)}; {self.tokens} tokens in {self.elapsed:.1f} s "
            f"({self.tokens_per_second:.0f} tokens/s); outcomes in {output}"
        )


class MapsRequests(Protocol):
    """A client that can fan requests out: ``InfernetClient.map``."""

    def map(
        self, requests: Requests, *, concurrency: int, max_attempts: int, **pacing: Any
    ) -> FanOut: ...


async def run_batch(
    client: MapsRequests,
    input_path: Path,
    output_path: Path,
    *,
    concurrency: int,
    max_attempts: int = 3,
    rate: float | None = None,
    burst: int = 1,
    defaults: BatchDefaults,
    resume: ResumeState,
    summary: BatchSummary,
    progress: Progress | None = None,
) -> BatchSummary:
    """Run every pending line of ``input_path``, appending outcomes to ``output_path``.

    ``summary`` is filled as jobs end, so a caller that is interrupted still has the figures.
    Cancelled jobs are written with their partial text before the cancellation propagates.
    ``rate`` and ``burst``: the caller's own cap (``InfernetClient.map``).
    """
    lines_by_index: dict[int, int] = {}
    submitted = 0

    def remember_line(request: BatchRequest, line_no: int) -> None:
        nonlocal submitted
        lines_by_index[submitted] = line_no
        submitted += 1

    with OutcomeWriter(output_path) as writer:

        def record(outcome: BatchOutcome) -> None:
            writer.write(outcome_line(outcome, lines_by_index.pop(outcome.index, None)))
            summary.tokens += outcome.tokens
            if outcome.status == "ok":
                summary.ok += 1
            elif outcome.status == "cancelled":
                summary.cancelled += 1
            else:
                summary.failed += 1
            if progress is not None:
                progress.job_done(outcome)

        def record_invalid(invalid: InvalidLine) -> None:
            writer.write(invalid.to_json())
            summary.invalid += 1
            if progress is not None:
                progress.job_done(invalid)

        requests = iter_requests(
            input_path,
            defaults,
            skip=resume.done,
            on_invalid=record_invalid,
            on_line=remember_line,
        )
        pacing: dict[str, Any] = {} if rate is None else {"rate": rate, "burst": burst}
        fan_out = client.map(requests, concurrency=concurrency, max_attempts=max_attempts, **pacing)
        try:
            async with fan_out as outcomes:
                async for outcome in outcomes:
                    record(outcome)
        finally:
            # Written too: a job that ended as the run was interrupted is not submitted again.
            for outcome in (*fan_out.undelivered, *fan_out.cancelled):
                record(outcome)
            summary.ended = time.perf_counter()
    return summary


def default_output_path(input_path: Path) -> Path:
    """``in.jsonl`` -> ``in.out.jsonl`` beside it."""
    return input_path.with_name(input_path.stem + ".out" + (input_path.suffix or ".jsonl"))
