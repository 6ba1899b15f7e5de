"""Coverage-guided fuzz target (atheris) for SSEDecoder and TokenDecoder; not collected by pytest.

The same two invariants as tests/hardening/test_fuzz.py: only ``InfernetError`` subclasses
escape, and the result does not depend on the chunking. The first two bytes of each input choose
the chunk size, the third the chunk types (bytes, bytearray, memoryview); the rest is the stream.

Run (``pip install atheris``); the FIRST directory receives the new inputs, so give it a scratch one
and the seed corpus second::

    PYTHONPATH=. python tests/hardening/fuzz_atheris.py /tmp/sse-corpus \
        tests/hardening/fuzz_corpus -max_total_time=600 -artifact_prefix=/tmp/

A crasher found this way goes into tests/hardening/fuzz_corpus/ as ``crash-<what>.sse`` (its
first three bytes dropped, since they only chose the chunking), where tests/hardening/test_fuzz.py
replays it under many chunkings forever.
"""

from __future__ import annotations

import sys
from typing import Any

import atheris

with atheris.instrument_imports():
    from infernet_async._token_decoder import TokenDecoder
    from infernet_async.errors import InfernetError
    from infernet_async.sse import SSEDecoder


def _run(decoder: Any, chunks: list[bytes]) -> tuple[list[Any], type[BaseException] | None, Any]:
    events: list[Any] = []
    try:
        for chunk in chunks:
            events.extend(decoder.feed(chunk))
        events.extend(decoder.close())
    except InfernetError as exc:
        return [], type(exc), None
    extra = (
        (decoder.malformed, decoder.last_event_id) if isinstance(decoder, TokenDecoder) else None
    )
    return events, None, extra


def fuzz_one_input(raw: bytes) -> None:
    if len(raw) < 3:
        return
    size = 1 + int.from_bytes(raw[:2], "big") % 257
    kinds = raw[2]  # its bits pick bytes, bytearray or memoryview for each chunk in turn
    data = raw[3:]
    chunks: list[Any] = [data[i : i + size] for i in range(0, len(data), size)]
    chunks = [
        (bytes, bytearray, memoryview)[(kinds >> (2 * (n % 4))) % 4 % 3](c)
        for n, c in enumerate(chunks)
    ]
    for factory in (SSEDecoder, TokenDecoder):
        whole = _run(factory(), [data])
        pieces = _run(factory(), chunks)
        if whole[1] is not None or pieces[1] is not None:
            assert whole[1] == pieces[1], (whole[1], pieces[1])
        else:
            assert whole == pieces, (factory.__name__, size)


def main() -> None:
    atheris.Setup(sys.argv, fuzz_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
