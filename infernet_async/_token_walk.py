"""Reading token events straight from decoded SSE text, without the line loop or ``json.loads``.

``TokenDecoder``'s fast path. Rule: what these functions return is exactly what the SSE decoder
plus ``json.loads`` give for the text they take, and they stop (or decline) at anything else, which
the caller hands to the SSE decoder. The text always starts at an event boundary and ends with a
blank line; JSON strings are decoded by json's own scanner (see ``_textfast``).
"""

from __future__ import annotations

from ._event_build import new, new_tokens, set_text, set_token_id
from ._textfast import QUIET_BLOCK, TEXT_EVENTS, TOKEN_EVENT, scanstring, unescape
from .events import StreamEvent, Token

__all__ = ["WALK_LIMIT", "text_events", "walk"]

# Above this many characters the fast path first tries one regex call over the whole region (a C
# loop, for the guide's data-only dialect) before walking events one by one in Python, which is
# cheaper for the one to three events of a live chunk.
WALK_LIMIT = 256


def walk(
    text: str, event_id: str | None, position: int, tokens: list[StreamEvent]
) -> tuple[str | None, int]:
    """Append to ``tokens`` the token events of ``text`` from ``position`` on, up to the first block
    the walk does not take; returns the last event id and where it stopped (``len(text)`` when it
    took every block, else the start of the block it left).

    ``text`` starts at an event boundary and ends with a blank line. A block the walk takes is one
    token event (``TOKEN_EVENT``: any of ``id: <id>``, ``event: token`` and comment lines in any
    order, then ``data: {"text": "..."}`` and the blank line), a block without data
    (``QUIET_BLOCK``: a ``: ping``, an id alone) or a blank line. The event type is ``token`` or
    none ("message"), which the SSE decoder's line loop reads alike for such data. JSON strings are
    read by json's own scanner, or matched by ``_textfast``'s strict pattern for them and decoded
    by that scanner, and what follows must be exactly the end of the object and the blank line. No
    line the walk takes holds a CR, so a text with CRs is decoded exactly too: the caller hands what
    the walk leaves to the SSE decoder's line loop after that loop's own line-end normalisation.
    """
    append = tokens.append
    size = len(text)
    while position < size:
        if text.startswith('data: {"text": "', position):  # the guide's shape: one C call
            try:
                body, end = scanstring(text, position + 16)
            except ValueError:
                return event_id, position
            if not text.startswith("}\n\n", end):
                return event_id, position
            position = end + 3
        else:
            match = TOKEN_EVENT(text, position)
            if match is None:
                match = QUIET_BLOCK(text, position)
                if match is None:
                    return event_id, position
                value = match.group(1)
                if value is not None:
                    event_id = value
                position = match.end()
                continue
            value, body = match.groups()
            if value is not None:
                event_id = value
            if "\\" in body:
                body = unescape(body)
            position = match.end()
        token = new(Token)
        set_text(token, body)
        set_token_id(token, event_id)
        append(token)
    return event_id, size


def text_events(text: str, event_id: str | None) -> list[StreamEvent] | None:
    """Tokens for ``text`` if it is nothing but data: {"text": ...} events, else ``None``."""
    if not text.startswith("data:"):  # the typed dialect, say: not worth a regex pass
        return None
    bodies = TEXT_EVENTS(text)
    if not bodies or text.count("\n") != 2 * len(bodies):
        return None
    if "\\" in text:
        bodies = [unescape(body) if "\\" in body else body for body in bodies]
    return new_tokens(bodies, event_id)
