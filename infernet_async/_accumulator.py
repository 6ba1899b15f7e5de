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


# Tokens are folded into one UTF-8 piece every _FOLD tokens. A ``str`` costs ~50 bytes beyond its
# text, so keeping one per token let a server sending one-character tokens make a stream hold ~30
# times its answer (6.3 GB for "€" tokens within the default timeout); one piece per _FOLD tokens
# costs a byte or so per token. UTF-8, not ``str``: a ``str`` widens every character of a piece to
# the widest one in it (four bytes an ASCII character, beside one emoji).
_FOLD = 256


class Accumulator:
    """The partial-response state of one ``TokenStream``.

    Memory: the text as UTF-8 (``nbytes``) plus up to ``_FOLD`` recent tokens; once ``text`` is
    read, the ``str`` it built stands for everything before (its pieces are freed).
    """

    __slots__ = (
        "_head",
        "_pieces",
        "_recent",
        "_text",
        "attempt",
        "chars",
        "done_text",
        "error_code",
        "error_message",
        "finished",
        "job_id",
        "nbytes",
        "reason",
        "token_count",
    )

    def __init__(self) -> None:
        # The text as a str once ``text`` was read (the pieces before it are freed), then the
        # pieces and the recent tokens that came after.
        self._head = ""
        self._pieces: list[bytes] = []
        self._recent: list[str] = []
        self._text: str | None = ""
        self.token_count = 0
        self.chars = 0  # len(text), kept as tokens come: text is joined only when asked for
        self.nbytes = 0  # len(text) in UTF-8: what the answer-size limit counts
        self.job_id: str | None = None
        self.finished = False
        self.reason: TerminalReason | None = None
        self.error_code: str | None = None
        self.error_message: str | None = None
        self.done_text: str | None = None
        self.attempt = 1

    @property
    def text(self) -> str:
        """Everything received in the current attempt, joined when asked for.

        The pieces are decoded one at a time and each is freed as it is, so joining holds the
        text about twice at most (the parts and the joined ``str``), not three times.
        """
        text = self._text
        if text is None:
            self._fold()
            pieces = self._pieces
            parts = [self._head]
            pieces.reverse()
            while pieces:
                # surrogatepass: JSON may carry a lone surrogate escape, which a token keeps.
                parts.append(pieces.pop().decode("utf-8", "surrogatepass"))
            text = self._head = self._text = "".join(parts)
        return text

    def _fold(self) -> None:
        recent = self._recent
        if recent:
            self._pieces.append("".join(recent).encode("utf-8", "surrogatepass"))
            recent.clear()

    def add_token(self, text: str, nbytes: int | None = None) -> None:
        """Add one token (the stream passes no empty one: it carries nothing and is not
        counted); ``nbytes`` is its UTF-8 size when the caller has it already."""
        recent = self._recent
        recent.append(text)
        self.token_count += 1
        self.chars += len(text)
        self.nbytes += self.utf8_size(text) if nbytes is None else nbytes
        self._text = None
        if len(recent) >= _FOLD:
            self._fold()

    @staticmethod
    def utf8_size(text: str) -> int:
        """``len(text.encode())``, without encoding an ASCII text (``isascii`` is O(1))."""
        return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))

    @property
    def terminal(self) -> bool:
        return self.reason is not None

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
        self._head = ""
        self._pieces = []
        self._recent = []
        self._text = ""
        self.token_count = 0
        self.chars = 0
        self.nbytes = 0
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
    ``Last-Event-ID``), so every replayed token must match the delivered text where it falls:
    matching tokens are skipped, one that runs past the delivered text is trimmed to the part
    beyond it (a finished job replays as one event holding its whole text), and one that
    contradicts it raises ``ReplayDiverged``. The text decides, not the ids: a job that ran again
    after a re-queue may replay new opaque ids, or reuse numeric ones for other text, and
    skipping by id alone would splice two attempts. Nor do ids tell a resume after
    ``Last-Event-ID`` (which neither the live control plane nor the DevServer does) from a re-run
    numbered after the old attempt, whose ids only grow: a stream that does not replay what was
    delivered raises ``ReplayDiverged`` rather than risk a spliced answer. A ``done`` that comes
    before the replay has caught up, or whose whole text does not begin with the delivered text,
    raises it too: ``finished`` must mean a whole answer. Job and meta events of the replay are
    dropped.
    """

    __slots__ = ("_delivered", "_matched", "done")

    def __init__(self, delivered: str) -> None:
        self._delivered = delivered
        self._matched = 0
        self.done = False
        """True once nothing is left to check: every later event passes untouched."""

    def _diverged(self, what: str) -> ReplayDiverged:
        return ReplayDiverged(
            f"{what} ({self._matched} of the {len(self._delivered)} delivered chars matched)"
        )

    def feed(self, event: StreamEvent) -> StreamEvent | None:
        """The event to hand out (a ``Token`` may come back trimmed), or ``None`` to skip it.

        Raises:
            ReplayDiverged: a replayed token, or the end of the replay, contradicts the
                delivered text.
        """
        if self.done:
            return event
        if isinstance(event, Done):
            if self._matched < len(self._delivered):
                raise self._diverged("the replay ended")
            if event.text is not None and not event.text.startswith(self._delivered):
                raise self._diverged("the replay's whole text differs")
            self.done = True
            return event
        if isinstance(event, ErrorEvent):
            self.done = True
            return event
        if not isinstance(event, Token):
            return None
        delivered, matched, text = self._delivered, self._matched, event.text
        if matched == len(delivered):
            self.done = True
            return event
        if delivered.startswith(text, matched):
            self._matched = matched + len(text)
            return None
        if text.startswith(delivered[matched:]):
            self.done = True
            fresh = text[len(delivered) - matched :]
            return Token(fresh, event.id) if fresh else None
        raise self._diverged("the replayed text differs")
