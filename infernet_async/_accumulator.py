"""Sans-IO state of one streamed answer: the text received so far, the job id, and how the stream
ended.

Rules: a token is added here *before* the stream yields it, so ``text`` always means "everything the
caller may have seen" and survives ``break``, cancellation and errors; ``finished`` becomes true
only on a clean ``Done``; the first terminal reason recorded wins (a later ``aclose()`` does not
overwrite "node_disconnected"). No asyncio, no aiohttp: the stream drives it.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["Accumulator", "TerminalReason"]

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
        self.reason = None
        self.error_code = None
        self.error_message = None
        self.finished = False
        self.attempt += 1
        return discarded
