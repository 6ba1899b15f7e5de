"""The token fast path: read ``{"text": "..."}`` payloads without a full ``json.loads``.

Rule: every function here either returns exactly what ``json.loads`` would give or declines
(``None``, no match), and the caller then falls back to ``json.loads``. JSON strings are decoded by
``json.decoder.scanstring``, the C routine ``json.loads`` itself runs on every string, so escapes,
surrogate pairs and lone surrogates come out identical; the patterns only check the structure around
the string. ``tests/unit/test_events.py`` compares both on arbitrary strings with hypothesis.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from json import decoder as _json_decoder

__all__ = ["QUIET_BLOCK", "TEXT_EVENTS", "TOKEN_EVENT", "scanstring", "text_of", "unescape"]

scanstring: Callable[[str, int], tuple[str, int]] = _json_decoder.scanstring  # type: ignore[attr-defined]
"""``scanstring(s, end)``: decode the JSON string whose opening quote is just before ``s[end]``;
returns it and the index after its closing quote (the C scanner; typeshed does not declare it)."""

# One JSON string body (between the quotes): characters JSON allows unescaped (anything but '"', '\'
# and U+0000..U+001F) and the escapes it defines. Unrolled so the regex engine never backtracks.
_PLAIN = r'[^"\\\x00-\x1f]*'
_BODY = _PLAIN + r'(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})' + _PLAIN + r")*"

TEXT_EVENTS = re.compile(r'^data: ?\{"text": ?"(' + _BODY + r')"\}\n\n', re.MULTILINE).findall
"""Find the ``data: {"text": "<body>"}`` + blank line blocks in decoded SSE text; returns bodies.

Proof of tiling for the caller: every match starts a line and holds exactly two LFs (a body has no
raw control characters), so if the text ends with LF and holds exactly twice as many LFs as there
are matches, each LF lies in a match and there is no gap anywhere: the text is those blocks and
nothing else, each an SSE event whose data is ``{"text": "<body>"}``.
"""

# The lines an SSE block may carry before a token event's data, in any order: ``id: <value>``
# (without CR or NUL, which the SSE layer would split or ignore), ``event: token``, comments. Each
# alternative starts with a character of its own and ends at its line's end.
_HEADER = r"(?:id: ([^\n\r\x00]*)\n|event: token\n|:[^\n\r]*\n)*"

TOKEN_EVENT = re.compile(_HEADER + r'data: ?\{"text": ?"(' + _BODY + r')"\}\n\n').match
"""Match one token event at a line start of LF-only SSE text: header lines, then
``data: {"text": "<body>"}`` (either spacing) and the blank line.

Groups: the value of the block's last ``id`` line (a repeated group keeps its last repetition),
else ``None``; the JSON string body (decode it with ``unescape`` when it holds a backslash). The
event type is ``token`` or none, which the caller reads alike. No part of the pattern can cross a
blank line, so a failed match never looks past the block it starts in (no quadratic rescans).
"""

QUIET_BLOCK = re.compile(_HEADER + r"\n").match
"""Match a block of header lines ended by its blank line (a ``: ping``, an id alone, or just the
blank line): no data, so the SSE layer dispatches nothing. Group 1: the value of its last ``id``
line, else ``None``; it becomes the last event id."""

_HEAD = re.compile(r'[ \t\n\r]*\{[ \t\n\r]*"text"[ \t\n\r]*:[ \t\n\r]*"').match
_TAIL = re.compile(r"[ \t\n\r]*\}[ \t\n\r]*").fullmatch


def unescape(body: str) -> str:
    """Decode a JSON string body that ``TEXT_EVENTS`` matched (so its escapes are valid)."""
    return scanstring(body + '"', 0)[0]


def text_of(data: str) -> str | None:
    """The ``"text"`` of ``data`` when that is a JSON object with this one key and a string value.

    Returns ``None`` for any other shape, valid JSON or not: the caller then runs ``json.loads``.
    """
    if data.startswith('{"text": "'):
        start = 10
    elif data.startswith('{"text":"'):
        start = 9
    else:
        head = _HEAD(data)
        if head is None:
            return None
        start = head.end()
    try:
        text, end = scanstring(data, start)
    except ValueError:  # JSONDecodeError: a raw control character, a bad escape, no closing quote
        return None
    if end == len(data) - 1 and data[end] == "}":
        return text
    if _TAIL(data, end) is not None:
        return text
    return None
