"""Sans-IO state of one streamed answer: the text so far, the job id, how the stream ended, and
which events of a replayed stream were delivered already.

Rules: a token is added here *before* the stream yields it, so ``text`` always means "everything the
caller may have seen" and survives ``break``, cancellation and errors; ``finished`` becomes true
only on a clean ``Done``; the first terminal reason recorded wins (a later ``aclose()`` does not
overwrite "node_disconnected"). No asyncio, no aiohttp: the stream drives it.
"""

from __future__ import annotations

from typing import Literal

from .events import Done, ErrorEvent, StreamEvent, Token

__all__ = ["Accumulator", "ReplayDiverged", "ReplayFilter", "TerminalReason"]

TerminalReason = Literal[
    "done",
    "error",
    "node_disconnected",
    "incomplete",
    "timeout",
    "cancelled",
    "closed",
    "exception",
]


class Accumulator:
    """The partial-response state of one ``TokenStream``."""

    __slots__ = (
        "_joined",
        "_joined_parts",
        "attempt",
        "chars",
        "done_text",
        "error_code",
        "error_message",
        "finished",
        "job_id",
        "parts",
        "reason",
    )

    def __init__(self) -> None:
        self.parts: list[str] = []
        self._joined = ""
        self._joined_parts = 0
        self.chars = 0  # len(text), kept as tokens come: text is joined only when asked for
        self.job_id: str | None = None
        self.finished = False
        self.reason: TerminalReason | None = None
        self.error_code: str | None = None
        self.error_message: str | None = None
        self.done_text: str | None = None
        self.attempt = 1

    @property
    def text(self) -> str:
        """Everything received in the current attempt, joined lazily and incrementally."""
        if self._joined_parts != len(self.parts):
            self._joined += "".join(self.parts[self._joined_parts :])
            self._joined_parts = len(self.parts)
        return self._joined

    @property
    def token_count(self) -> int:
        return len(self.parts)

    @property
    def terminal(self) -> bool:
        return self.reason is not None

    def add_token(self, text: str) -> None:
        self.parts.append(text)
        self.chars += len(text)

    def set_job_id(self, job_id: str | None) -> None:
        # The first id wins: a replayed stream of the same job cannot change it, and a header beats
        # nothing.
        if job_id and self.job_id is None:
            self.job_id = job_id

    def finish(self, *, done_text: str | None = None) -> None:
        """The stream ended cleanly (``[DONE]`` / ``event: done``)."""
        if self.reason is None:
            self.finished = True
            self.reason = "done"
            self.done_text = done_text

    def fail(
        self, reason: TerminalReason, *, code: str | None = None, message: str | None = None
    ) -> None:
        """The stream ended any other way; the first terminal reason is kept."""
        if self.reason is None:
            self.reason = reason
            self.error_code = code
            self.error_message = message

    def restart(self) -> str:
        """Start a new attempt of the same job (after ``node_disconnected``); returns the discarded
        text.
        """
        discarded = self.text
        self.parts = []
        self._joined = ""
        self._joined_parts = 0
        self.chars = 0
        self.reason = None
        self.error_code = None
        self.error_message = None
        self.finished = False
        self.attempt += 1
        return discarded


class ReplayDiverged(Exception):
    """The replayed stream is not the text that was delivered (the job restarted elsewhere)."""


class ReplayFilter:
    """Skips the replay of what was already delivered, after a reconnect to the same job.

    The control plane replays a job's stream from its start (the live one ignores
    ``Last-Event-ID``). Tokens up to the last delivered event id are skipped by id (typed
    dialect); after that, and in the data-only dialect, replayed token text is matched against the
    delivered text, because a finished job replays as one event holding its whole text: only the
    part beyond what was delivered gets through. Job and meta events of the replay are dropped.
    """

    __slots__ = ("_delivered", "_last_id", "_matched", "_seen_last", "done")

    def __init__(self, delivered: str, last_id: str | None = None) -> None:
        self._delivered = delivered
        self._last_id = last_id
        self._matched = 0
        self._seen_last = False
        self.done = False
        """True once the replay caught up: every later event passes untouched."""

    def _id_replayed(self, event_id: str | None) -> bool:
        if self._last_id is None or event_id is None or self._seen_last:
            return False
        try:
            return int(event_id) <= int(self._last_id)
        except ValueError:
            # Opaque ids: everything up to and including the last delivered one is a replay.
            if event_id == self._last_id:
                self._seen_last = True
            return True

    def feed(self, event: StreamEvent) -> StreamEvent | None:
        """The event to hand out (a ``Token`` may come back trimmed), or ``None`` to skip it.

        Raises:
            ReplayDiverged: a replayed token contradicts the delivered text.
        """
        if self.done:
            return event
        if isinstance(event, Done | ErrorEvent):
            self.done = True
            return event
        if not isinstance(event, Token):
            return None
        if self._id_replayed(event.id):
            self._matched += len(event.text)
            return None
        remaining = self._delivered[self._matched :]
        if not remaining:
            self.done = True
            return event
        if remaining.startswith(event.text):
            self._matched += len(event.text)
            return None
        if event.text.startswith(remaining):
            self.done = True
            fresh = event.text[len(remaining) :]
            return Token(fresh, event.id) if fresh else None
        raise ReplayDiverged(
            f"replayed text diverges after {self._matched} of {len(self._delivered)} chars"
        )
