"""Sans-IO HTTP/1.1 for a client, the response parser: framing and body.

``ResponseParser.feed(data)`` takes the bytes of each socket read and returns the body bytes they
held (de-chunked); ``feed_eof()`` reports the end of the connection. No I/O, standard library only:
the caller (our asyncio protocol) owns the socket. The head's grammar is ``_http1_head``'s, the
request encoder ``_http1_request``. Framing follows RFC 9112, as a user agent reading responses.

Decisions where the RFC leaves a choice (section numbers are RFC 9112 unless marked):

- The head must start with ``HTTP/1.``: no leading empty lines, so a non-HTTP peer fails on its
  first bytes. Its end is its first empty line (a bare LF ends a head line, §2.2).
- Line endings, chunked body: size lines, the CRLF after chunk data, trailer lines and the final
  empty line need CRLF exactly. §2.2's bare-LF allowance covers the start line and fields, not the
  chunked grammar, and lenient chunk parsing is the classic desync vector.
- CONNECT is not supported (its 2xx starts a tunnel), so ``method="CONNECT"`` is a ValueError.
- Framing (§6.3): HEAD, 1xx, 204, 304 have no body whatever the fields say. Transfer-Encoding
  ``chunked`` frames the body (``_http1_head.check_chunked`` refuses any other). TE with
  Content-Length: TE wins, and the connection is not reusable. Otherwise Content-Length, else the
  body runs to EOF.
- Chunk size: 1-16 hex digits, nothing else (no ``0x``, sign, space or ``_``, which ``int()``
  would take). Extensions must match the §7.1.1 grammar and are ignored; BWS before ``;`` is
  allowed, trailing whitespace without an extension is not. A size line is capped at 4 KiB.
- Trailer fields are validated like header fields and dropped; they count against
  ``max_head_size`` and ``max_headers``.
- Bytes after the end of the message are ignored and make ``reusable`` False.

Performance: ``feed()`` searches the bytes with ``re``/``find`` and slices whole chunks out; when
the buffer is empty (the usual case) it parses the read in place without copying it, collects the
pieces in a list and joins once. Only an unfinished line (a size line, a head, a trailer, or the
CRLF after chunk data) is kept in the buffer, which is trimmed once per feed. A read without LF
that extends an unfinished line is appended without rescanning, so byte-at-a-time input is linear.
"""

from __future__ import annotations

import re
from typing import Final

from ._http1_head import (
    FIELD_VALUE,
    TOKEN,
    ProtocolError,
    ResponseHead,
    check_chunked,
    content_length,
    excerpt,
    parse_fields,
    parse_head,
)

__all__ = ["ResponseParser"]

_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:\r\n|([ \t;][^\r\n]*)\r\n)")
_CHUNK_EXT = re.compile(
    rb"(?:[ \t]*;[ \t]*" + TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + TOKEN + rb"|" + _QUOTED + rb"))?)+"
)
_HEX_RUN = re.compile(rb"[0-9A-Fa-f]*")

_MAX_CHUNK_LINE: Final = 4096
_STATUS_PREFIX: Final = b"HTTP/1."

# Parser states. Ints, compared with ==, because the hot path tests them per feed.
_HEAD, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS, _LENGTH, _CLOSE, _DONE, _ERROR = range(9)

_NO_BODY_STATUSES: Final = frozenset({204, 304})


class ResponseParser:
    """Incremental parser for one HTTP/1.1 response (1xx interim responses skipped).

    ``feed()`` returns body bytes as soon as they arrive (a partial chunk is not held back);
    ``head`` is set once the final head is parsed and ``complete`` once the whole message is. Any
    ProtocolError leaves the parser unusable: later calls raise ProtocolError again.
    """

    __slots__ = (
        "_buf",
        "_eof",
        "_error",
        "_extra",
        "_framing",
        "_head_request",
        "_max_head_size",
        "_max_headers",
        "_remaining",
        "_scan",
        "_state",
        "_te_and_cl",
        "_trailer_bytes",
        "_trailer_count",
        "complete",
        "head",
    )

    def __init__(
        self, *, method: str = "GET", max_head_size: int = 65536, max_headers: int = 128
    ) -> None:
        if method == "CONNECT":
            raise ValueError("CONNECT is not supported: its 2xx response starts a tunnel")
        self.head: ResponseHead | None = None
        self.complete = False
        self._head_request = method == "HEAD"
        self._max_head_size = max_head_size
        self._max_headers = max_headers
        self._buf = bytearray()
        self._state = _HEAD
        self._scan = 0  # where the next head search starts, relative to the unconsumed bytes
        self._remaining = 0  # bytes still due in the current chunk or Content-Length body
        self._framing = "unknown"
        self._extra = False
        self._te_and_cl = False
        self._eof = False
        self._error = ""
        self._trailer_bytes = 0
        self._trailer_count = 0

    @property
    def reusable(self) -> bool:
        """The connection may carry another request: the message ended by its own framing."""
        head = self.head
        return (
            self.complete
            and head is not None
            and head.keep_alive
            and self._framing != "close"
            and not self._extra
            and not self._te_and_cl
            and not self._eof
        )

    @property
    def framing(self) -> str:
        """One of chunked, length, close, none; "unknown" until the final head is parsed."""
        return self._framing

    def feed(self, data: bytes | bytearray | memoryview) -> bytes:
        """Consume bytes from the socket; return the body bytes they contained (b"" if none).

        Raises ProtocolError on malformed input; the parser is unusable afterwards.
        """
        if type(data) is not bytes:
            data = bytes(data)  # one copy; the caller may reuse its buffer, and slices are bytes
        state = self._state
        buf = self._buf
        if state == _CHUNK_SIZE and not buf:
            # The hot path, one event per read: the read is exactly one whole chunk.
            m = _CHUNK_LINE.match(data)
            if m is not None:
                size_hex, ext = m.groups()
                start = m.end()
                end = start + int(size_hex, 16)
                if ext is None and start < end and end + 2 == len(data) and data.endswith(b"\r\n"):
                    return data[start:end]
        elif state >= _DONE:
            return self._feed_after_end(data)
        src: bytes | bytearray
        if buf:
            if state in (_HEAD, _CHUNK_SIZE, _TRAILERS) and len(buf) > 16 and b"\n" not in data:
                # Still inside the same unfinished line: nothing can be parsed yet.
                buf += data
                self._check_line_limit(len(buf))
                return b""
            buf += data
            src = buf
        else:
            src = data
        pieces: list[bytes | bytearray] = []
        try:
            if state in (_CHUNK_SIZE, _CHUNK_DATA):
                pos = self._chunks(src, 0, pieces)
                if self._state == _TRAILERS:
                    pos = self._run(src, pos, pieces)
            else:
                pos = self._run(src, 0, pieces)
        except ProtocolError as exc:
            self._fail(str(exc))
            exc.body = b"".join(pieces)
            raise
        if src is buf:
            del buf[:pos]
        elif pos < len(src):
            buf += memoryview(src)[pos:]
        return b"".join(pieces)

    def feed_eof(self) -> bytes:
        """The connection closed: complete a close-delimited body, else check nothing is missing.

        Returns the remaining body bytes (always b"": none is held back). Raises ProtocolError when
        the message was cut short.
        """
        state = self._state
        if state == _ERROR:
            raise ProtocolError(self._error)
        self._eof = True
        if state == _CLOSE:
            self._state = _DONE
            self.complete = True
        elif state == _HEAD:
            if self._buf:
                self._fail("the connection closed inside the response head")
            else:
                self._fail("the connection closed before any response bytes")
            raise ProtocolError(self._error)
        elif state == _LENGTH:
            self._fail(f"the connection closed {self._remaining} bytes short of Content-Length")
            raise ProtocolError(self._error)
        elif state != _DONE:
            self._fail("the connection closed inside a chunked body")
            raise ProtocolError(self._error)
        return b""

    # -- internals -------------------------------------------------------------------------------

    def _fail(self, message: str) -> None:
        self._state = _ERROR
        self._error = message
        self._buf = bytearray()

    def _feed_after_end(self, data: bytes | bytearray | memoryview) -> bytes:
        if self._state == _ERROR:
            raise ProtocolError(self._error)
        if self._eof:
            raise RuntimeError("feed() after feed_eof()")
        if len(data):
            self._extra = True
        return b""

    def _check_line_limit(self, pending: int) -> None:
        state = self._state
        if state == _HEAD:
            if pending > self._max_head_size:
                raise self._raise_limit(f"response head larger than {self._max_head_size} bytes")
        elif state == _CHUNK_SIZE:
            if pending > _MAX_CHUNK_LINE:
                raise self._raise_limit(f"chunk size line longer than {_MAX_CHUNK_LINE} bytes")
        elif self._trailer_bytes + pending > self._max_head_size:
            raise self._raise_limit(f"trailer section larger than {self._max_head_size} bytes")

    def _raise_limit(self, message: str) -> ProtocolError:
        self._fail(message)
        return ProtocolError(message)

    def _run(self, src: bytes | bytearray, pos: int, pieces: list[bytes | bytearray]) -> int:
        """Parse from pos in any state until the bytes run out; return the consumed position."""
        n = len(src)
        while pos < n:
            state = self._state
            if state in (_CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF):
                pos = self._chunks(src, pos, pieces)
                if self._state != _TRAILERS:
                    break
            elif state == _HEAD:
                pos = self._head(src, pos)
                # Still _HEAD: an unfinished head (scan set) or a dropped 1xx head (go on).
                if self._state == _HEAD and self._scan:
                    break
            elif state == _TRAILERS:
                pos = self._trailers(src, pos)
                if self._state == _TRAILERS:
                    break
            elif state == _LENGTH:
                end = pos + self._remaining
                if end <= n:
                    pieces.append(src[pos:end])
                    pos = end
                    self._remaining = 0
                    self._finish()
                else:
                    pieces.append(src[pos:])
                    self._remaining = end - n
                    pos = n
            elif state == _CLOSE:
                pieces.append(src[pos:])
                pos = n
            else:  # _DONE
                self._extra = True
                pos = n
        return pos

    def _finish(self) -> None:
        self._state = _DONE
        self.complete = True

    def _chunks(self, src: bytes | bytearray, pos: int, pieces: list[bytes | bytearray]) -> int:
        """The chunked-body loop: sizes, data, CRLFs, until the last chunk or the bytes run out."""
        n = len(src)
        state = self._state
        match = _CHUNK_LINE.match
        append = pieces.append
        while pos < n:
            if state == _CHUNK_SIZE:
                m = match(src, pos)
                if m is None:
                    self._state = state
                    self._check_partial_size_line(src, pos)
                    break
                size_hex, ext = m.groups()
                if ext is not None and _CHUNK_EXT.fullmatch(ext) is None:
                    raise ProtocolError(f"invalid chunk extension {excerpt(ext)}")
                size = int(size_hex, 16)
                pos = m.end()
                if not size:
                    state = _TRAILERS
                    break
                end = pos + size
                if end + 2 <= n:
                    # The common case: the whole chunk and its CRLF are here; one slice.
                    if not src.startswith(b"\r\n", end):
                        raise ProtocolError("missing CRLF after chunk data")
                    append(src[pos:end])
                    pos = end + 2
                    continue
                self._remaining = size
                state = _CHUNK_DATA  # the chunk runs past these bytes: take what is here
            if state == _CHUNK_DATA:
                end = pos + self._remaining
                if end <= n:
                    append(src[pos:end])
                    pos = end
                    state = _CHUNK_CRLF
                else:
                    append(src[pos:])
                    self._remaining = end - n
                    pos = n
            else:  # _CHUNK_CRLF
                if n - pos >= 2:
                    if not src.startswith(b"\r\n", pos):
                        raise ProtocolError("missing CRLF after chunk data")
                    pos += 2
                    state = _CHUNK_SIZE
                else:
                    if src[pos] != 13:
                        raise ProtocolError("missing CRLF after chunk data")
                    break
        self._state = state
        return pos

    def _check_partial_size_line(self, src: bytes | bytearray, pos: int) -> None:
        """No complete size line at pos: raise if it is invalid already, else wait for more."""
        n = len(src)
        lf = src.find(b"\n", pos)
        if lf != -1:
            line = src[pos : lf + 1]
            digits = _HEX_RUN.match(line).end()  # type: ignore[union-attr]
            if digits > 16:
                raise ProtocolError("chunk size longer than 16 hex digits")
            raise ProtocolError(f"invalid chunk size line {excerpt(line)}")
        digits = _HEX_RUN.match(src, pos, pos + 17).end() - pos  # type: ignore[union-attr]
        if digits > 16:
            raise ProtocolError("chunk size longer than 16 hex digits")
        if pos + digits < n and (digits == 0 or src[pos + digits] not in b"\r \t;"):
            raise ProtocolError(f"invalid chunk size line {excerpt(src[pos : pos + 40])}")
        if n - pos > _MAX_CHUNK_LINE:
            raise ProtocolError(f"chunk size line longer than {_MAX_CHUNK_LINE} bytes")

    def _head(self, src: bytes | bytearray, pos: int) -> int:
        n = len(src)
        start = src[pos : pos + len(_STATUS_PREFIX)]
        if start != _STATUS_PREFIX[: len(start)]:
            raise ProtocolError(f"not an HTTP/1.x response: {excerpt(src[pos : pos + 40])}")
        scan = pos + self._scan
        # The head ends at its first empty line: LF CRLF or LF LF (a bare LF ends a head line).
        crlf = src.find(b"\n\r\n", scan)
        lf = src.find(b"\n\n", scan)
        if crlf != -1 and (lf == -1 or crlf < lf):
            last, end = crlf, crlf + 3
        elif lf != -1:
            last, end = lf, lf + 2
        else:
            if n - pos > self._max_head_size:
                raise ProtocolError(f"response head larger than {self._max_head_size} bytes")
            self._scan = max(1, n - pos - 2)
            return pos
        if end - pos > self._max_head_size:
            raise ProtocolError(f"response head larger than {self._max_head_size} bytes")
        self._scan = 0
        self._parse_head(bytes(src[pos : last + 1]))
        return end

    def _parse_head(self, block: bytes) -> None:
        parsed = parse_head(block, self._max_headers)
        if parsed is None:
            return  # interim response: dropped, the final head follows
        head, te, cl = parsed
        self.head = head
        self._te_and_cl = bool(te) and bool(cl)
        if self._head_request or head.status in _NO_BODY_STATUSES:
            self._framing = "none"
            self._finish()
        elif te:
            check_chunked(te, head.http_version)
            self._framing = "chunked"
            self._state = _CHUNK_SIZE
        elif cl:
            length = content_length(cl)
            if length:
                self._framing = "length"
                self._remaining = length
                self._state = _LENGTH
            else:
                self._framing = "none"
                self._finish()
        else:
            self._framing = "close"
            self._state = _CLOSE

    def _trailers(self, src: bytes | bytearray, pos: int) -> int:
        """Trailer lines, one at a time, until the empty line that ends the message."""
        n = len(src)
        while pos < n:
            lf = src.find(b"\n", pos)
            if lf == -1:
                self._check_line_limit(n - pos)
                break
            if lf == pos or src[lf - 1] != 13:
                raise ProtocolError("bare LF in the chunked trailer section")
            line = bytes(src[pos : lf - 1])
            pos = lf + 1
            if not line:
                self._finish()
                break
            self._trailer_bytes += len(line) + 2
            if self._trailer_bytes > self._max_head_size:
                raise ProtocolError(f"trailer section larger than {self._max_head_size} bytes")
            if b"\r" in line:
                raise ProtocolError("bare CR in the chunked trailer section")
            if line[0] in b" \t":
                if not self._trailer_count:
                    raise ProtocolError("whitespace before the first trailer field")
                if FIELD_VALUE.fullmatch(line) is None:
                    raise ProtocolError(f"invalid trailer field {excerpt(line)}")
                continue
            self._trailer_count += 1
            if self._trailer_count > self._max_headers:
                raise ProtocolError(f"more than {self._max_headers} trailer fields")
            parse_fields([line], 0, self._max_headers, "trailer")
        return pos
