"""Sans-IO HTTP/1.1, the response head: its grammar, ``ProtocolError`` and ``ResponseHead``.

``parse_head(block)`` reads one head (status line and fields) and says what it holds: the head, and
the Transfer-Encoding and Content-Length values the parser (``_http1``) frames the body by. Standard
library only. Decisions where RFC 9112 leaves a choice (sections of RFC 9112 unless marked):

- Line endings: a bare LF ends a line (§2.2 allows it); a bare CR anywhere is a ProtocolError (§2.2:
  reject or replace).
- obs-fold (a header line starting with SP/HTAB) is replaced by one SP, as §5.2 requires of a user
  agent reading a response. Whitespace between the status line and the first field is rejected
  (§2.2 allows that choice).
- Field names are tokens; whitespace before the colon is rejected (§5.1). Values are stripped of
  OWS and may be empty; any control character but HTAB (so NUL, CR, LF, DEL too) is rejected
  (RFC 9110 §5.5 makes them invalid; we do not keep them).
- Status line: ``HTTP/1.<digit> SP 3DIGIT [SP reason]``; ``HTTP/1.1 200`` without SP is accepted.
  HTTP/1.2..1.9 are read as 1.1 (RFC 9110 §2.5). A code outside 100-599 is invalid (RFC 9110
  §15): we raise rather than map it to 5xx, so no caller can mistake it for success.
- 1xx heads are parsed and dropped; 101 is a ProtocolError (we never ask to upgrade).
- Transfer-Encoding must be exactly ``chunked`` (list elements split, empties ignored): we send no
  TE, so any other coding (``gzip``, ``gzip, chunked``, ``chunked, chunked``) is a ProtocolError
  rather than body bytes we cannot decode; TE in an HTTP/1.0 response is faulty framing (§6.1).
  Content-Length is ASCII digits (at most 19 without leading zeros); repeated values (a list or
  repeated fields) must be equal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, NamedTuple

__all__ = [
    "FIELD_VALUE",
    "TCHAR",
    "TOKEN",
    "ParsedHead",
    "ProtocolError",
    "ResponseHead",
    "check_chunked",
    "content_length",
    "excerpt",
    "parse_fields",
    "parse_head",
]


class ProtocolError(Exception):
    """The server's bytes are not a valid HTTP/1.1 response (the message says what).

    ``body`` holds the body bytes the same ``feed`` decoded before the fault: they were valid,
    and a reader must not lose them.
    """

    body: bytes = b""


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """The final (non-1xx) response head.

    ``headers`` are (name, value) pairs in the order sent, decoded as latin-1, names as sent, values
    without surrounding OWS. ``keep_alive``: the server allows reuse (HTTP/1.1 without a ``close``
    connection option, or HTTP/1.0 with ``keep-alive``).
    """

    status: int
    reason: str
    http_version: str
    headers: tuple[tuple[str, str], ...]
    keep_alive: bool


class ParsedHead(NamedTuple):
    """A final head, and the raw values of the fields that frame its body."""

    head: ResponseHead
    transfer_encoding: list[str]
    content_length: list[str]


# The token grammar (RFC 9110 §5.6.2), shared with the chunk extensions and the request encoder.
TCHAR: Final = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
TOKEN: Final = rb"[" + TCHAR + rb"]+"

_STATUS_LINE = re.compile(rb"HTTP/1\.([0-9]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?")
# A head's field lines in the common shape (LF-ended, no obs-fold, nothing invalid), checked in
# one pass and split in another, on the latin-1 text: two regex calls for the whole head instead
# of two per field. Anything else takes the line-by-line path, which says what is wrong.
_PLAIN_FIELDS = re.compile(r"(?:[" + TCHAR.decode() + r"]+:[\t\x20-\x7e\x80-\xff]*\n)*")
_PLAIN_FIELD = re.compile(r"([" + TCHAR.decode() + r"]+):[ \t]*(.*?)[ \t]*\n")
_FIELD_LINE = re.compile(rb"(" + TOKEN + rb"):(.*)", re.DOTALL)
FIELD_VALUE: Final = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")

_MAX_LENGTH_DIGITS: Final = 19


def excerpt(line: bytes | bytearray) -> str:
    """The start of a faulty line, for a message."""
    return repr(bytes(line[:40])) + ("..." if len(line) > 40 else "")


def parse_head(block: bytes, max_headers: int) -> ParsedHead | None:
    """The head in ``block`` (status line and field lines, each ended by its LF, without the empty
    line); ``None`` for an interim (1xx) head, which is dropped. Raises ProtocolError."""
    block = block.replace(b"\r\n", b"\n")
    if b"\r" in block:
        raise ProtocolError("bare CR in the response head")
    status_end = block.index(b"\n")  # the block ends with its last line's LF
    status_line = block[:status_end]
    status_match = _STATUS_LINE.fullmatch(status_line)
    if status_match is None:
        raise ProtocolError(f"invalid status line {excerpt(status_line)}")
    minor, code, reason = status_match.groups()
    status = int(code)
    if not 100 <= status <= 599:
        raise ProtocolError(f"invalid status code {status}")
    text = block[status_end + 1 :].decode("latin-1")
    if _PLAIN_FIELDS.fullmatch(text) is not None:
        headers = _PLAIN_FIELD.findall(text)
        if len(headers) > max_headers:
            raise ProtocolError(f"more than {max_headers} header fields")
    else:
        lines = block.split(b"\n")
        del lines[-1]
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in parse_fields(lines, 1, max_headers, "header")
        ]
    if status < 200:
        if status == 101:
            raise ProtocolError("unexpected 101 Switching Protocols: no upgrade was asked for")
        return None
    version = "1.0" if minor == b"0" else "1.1"
    connection: set[str] = set()
    te: list[str] = []
    cl: list[str] = []
    for name, value in headers:
        lower = name.lower()
        if lower == "connection":
            connection.update(t.strip(" \t").lower() for t in value.split(","))
        elif lower == "transfer-encoding":
            te.append(value)
        elif lower == "content-length":
            cl.append(value)
    if version == "1.1":
        keep_alive = "close" not in connection
    else:
        keep_alive = "keep-alive" in connection and "close" not in connection
    head = ResponseHead(
        status=status,
        reason=reason.decode("latin-1") if reason is not None else "",
        http_version=version,
        headers=tuple(headers),
        keep_alive=keep_alive,
    )
    return ParsedHead(head, te, cl)


def parse_fields(
    lines: list[bytes], first: int, max_fields: int, kind: str
) -> list[tuple[bytes, bytes]]:
    """Field lines (from index first) as (name, value) pairs; obs-fold replaced by one SP."""
    fields: list[list[bytes]] = []
    for i in range(first, len(lines)):
        line = lines[i]
        if line[:1] in (b" ", b"\t"):
            if not fields:
                raise ProtocolError(f"whitespace before the first {kind} field")
            fields[-1].append(line)
            continue
        m = _FIELD_LINE.fullmatch(line)
        if m is None:
            colon = line.find(b":")
            if colon == -1:
                raise ProtocolError(f"{kind} line without a colon {excerpt(line)}")
            if colon and line[colon - 1] in b" \t":
                raise ProtocolError(f"whitespace before the colon in {kind} field {excerpt(line)}")
            raise ProtocolError(f"invalid {kind} field name {excerpt(line)}")
        if len(fields) >= max_fields:
            raise ProtocolError(f"more than {max_fields} {kind} fields")
        fields.append([m.group(1), m.group(2)])
    result: list[tuple[bytes, bytes]] = []
    for name, *parts in fields:
        value = (b" ".join(p.strip(b" \t") for p in parts)).strip(b" \t")
        if FIELD_VALUE.fullmatch(value) is None:
            raise ProtocolError(f"invalid character in {kind} field {name[:40]!r}")
        result.append((name, value))
    return result


def check_chunked(values: list[str], http_version: str) -> None:
    """Raise unless the Transfer-Encoding ``values`` say ``chunked``, once, and nothing else."""
    if http_version == "1.0":
        raise ProtocolError("Transfer-Encoding in an HTTP/1.0 response")
    codings = [c.strip(" \t").lower() for v in values for c in v.split(",")]
    codings = [c for c in codings if c]
    if codings != ["chunked"]:
        if not codings:
            raise ProtocolError("empty Transfer-Encoding")
        others = [c for c in codings if c != "chunked"]
        if others:
            raise ProtocolError(f"unsupported transfer coding {others[0][:40]!r}")
        raise ProtocolError("chunked applied more than once")


def content_length(values: list[str]) -> int:
    """The body's length from the Content-Length ``values``; raises ProtocolError."""
    lengths: set[str] = set()
    for value in values:
        for element in value.split(","):
            element = element.strip(" \t")
            if not (element.isascii() and element.isdigit()):
                raise ProtocolError(f"invalid Content-Length {value[:40]!r}")
            lengths.add(element.lstrip("0") or "0")
    if len(lengths) != 1:
        raise ProtocolError("conflicting Content-Length values")
    digits = lengths.pop()
    if len(digits) > _MAX_LENGTH_DIGITS:
        raise ProtocolError("Content-Length too large")
    return int(digits)
