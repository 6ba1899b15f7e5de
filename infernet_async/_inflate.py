"""Decoding a compressed response body: ``Inflater`` turns gzip or deflate into plain bytes for a
body sink, incrementally.

We ask for identity; a server (or proxy) that compresses anyway is decoded, in pieces of at most
``_INFLATE_PIECE`` bytes, so a small compressed read never becomes one huge buffer (a gzip bomb
stops at the decoder's event size limit). Errors are ``APIConnectionError``s.
"""

from __future__ import annotations

import zlib

from ._connection import BodySink
from .errors import APIConnectionError

__all__ = ["CODINGS", "Inflater"]

_INFLATE_PIECE = 64 * 1024
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
# The content codings an Inflater decodes.
CODINGS = frozenset(_WBITS)


class Inflater:
    """Incremental gzip/deflate decoding of a body, in bounded pieces."""

    def __init__(self, coding: str) -> None:
        self._coding = coding
        self._inflate = zlib.decompressobj(_WBITS[coding])
        self._first = True

    def feed(self, data: bytes, sink: BodySink) -> bool:
        wake = False
        try:
            out = (
                self._inflate_first(data)
                if self._first
                else self._inflate.decompress(data, _INFLATE_PIECE)
            )
            while True:
                if out and sink(out):
                    wake = True
                tail = self._inflate.unconsumed_tail
                if tail:
                    out = self._inflate.decompress(tail, _INFLATE_PIECE)
                elif self._inflate.eof and self._inflate.unused_data:
                    out = self._next_member(self._inflate.unused_data)
                else:
                    return wake
        except zlib.error as exc:
            raise APIConnectionError(
                f"the response body is not valid {self._coding}: {exc}", request_sent=True
            ) from exc

    def _next_member(self, rest: bytes) -> bytes:
        # A gzip body may be several members back to back (RFC 1952 §2.2), each a whole stream:
        # zlib stops at the end of the first, and what follows would be lost unread.
        wbits = _WBITS[self._coding]
        if wbits != _WBITS["gzip"]:  # "gzip" and "x-gzip" alike
            raise zlib.error(f"{len(rest)} bytes after the end of the compressed data")
        self._inflate = zlib.decompressobj(wbits)
        return self._inflate.decompress(rest, _INFLATE_PIECE)

    def check_end(self) -> None:
        """The body ended: raise if it ended inside the compressed data (bytes were lost)."""
        if not self._first and not self._inflate.eof:
            raise APIConnectionError(
                f"the response body ends inside its {self._coding} data: the rest was lost",
                request_sent=True,
            )

    def _inflate_first(self, data: bytes) -> bytes:
        self._first = False
        try:
            return self._inflate.decompress(data, _INFLATE_PIECE)
        except zlib.error:
            if self._coding != "deflate":
                raise
            # "deflate" is often sent raw, without the zlib wrapper RFC 9110 asks for.
            self._inflate = zlib.decompressobj(-zlib.MAX_WBITS)
            return self._inflate.decompress(data, _INFLATE_PIECE)
