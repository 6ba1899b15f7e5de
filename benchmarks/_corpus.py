"""Seeded token-stream corpora for the benchmarks: realistic bodies and the three chunkings.

The guide's corpus (``make_corpus``) is what the control plane sends for one long answer in the
guide's data-only dialect: ``data: {"text": "<token>"}`` events (rendered like Python's
``json.dumps``, non-ASCII kept raw as JavaScript's ``JSON.stringify`` does) and a final
``data: [DONE]``. Tokens look like an LLM's output: mostly short words with a leading space,
punctuation, newlines and quotes (JSON escapes), non-ASCII words and emoji, now and then a tab or a
backslash.

The same tokens in the hosted service's two other streams (live-service.md):

- ``make_openai_corpus``: the OpenAI-compatible ``/v1/chat/completions`` stream, data-only
  ``chat.completion.chunk`` objects in compact JSON: a role chunk, one chunk per token, a finish
  chunk, ``data: [DONE]``;
- ``make_chat_corpus``: the chat surface's typed stream: ``event: job`` (no id), ``id: n`` +
  ``event: meta``, ``id: n`` + ``event: token`` + ``data: {"text":"..."}`` (compact JSON), ``:
  ping`` comments now and then, ``event: done`` with the whole text and no ``[DONE]``; in LF or
  CRLF, fields in the order id/event/data (what the service writes) or event/id/data.
"""

from __future__ import annotations

import json
import random

__all__ = [
    "Corpus",
    "chunk_events",
    "chunk_fixed",
    "chunk_random",
    "make_chat_corpus",
    "make_corpus",
    "make_openai_corpus",
]

_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "it",
    "for",
    "was",
    "on",
    "are",
    "as",
    "with",
    "be",
    "by",
    "this",
    "at",
    "from",
    "or",
    "have",
    "an",
    "not",
    "but",
    "which",
    "they",
    "can",
    "more",
    "one",
    "all",
    "were",
    "their",
    "there",
    "been",
    "has",
    "when",
    "who",
    "will",
    "no",
    "if",
    "out",
    "so",
    "said",
    "what",
    "up",
    "its",
    "about",
    "into",
    "than",
    "them",
    "only",
    "other",
    "new",
    "some",
    "could",
    "time",
    "these",
    "two",
    "may",
    "then",
    "do",
    "first",
    "any",
    "my",
    "now",
    "such",
    "like",
    "our",
    "over",
    "man",
    "me",
    "even",
    "most",
    "made",
    "after",
    "also",
    "did",
    "many",
    "before",
    "must",
    "through",
    "back",
    "model",
    "token",
    "stream",
    "node",
    "inference",
    "GPU",
    "latency",
    "answer",
    "Paris",
    "France",
    "capital",
    "network",
    "protocol",
]
_SUFFIXES = ("", "", "", "s", "ing", "ed", "ly", "er")
_PUNCTUATION = (".", ",", ":", ";", "!", "?", ")", " (", " -", "'s", "...")
_NON_ASCII = (
    " café",
    " naïve",
    " über",
    " Zürich",
    " señor",
    " résumé",
    " 東京",
    " 北京",
    " Москва",
    " αβγ",
    " ½",
    " €5",
    " 😀",
    " 🚀",
    " 👍🏽",
    "—",
    "…",
    " ✓",
)
_ESCAPED = ("\n", "\n\n", '"', ' "', '."', "\t", "\\", " \\n", "\u2028")


class Corpus:
    """One rendered body and the facts a contestant's output is checked against.

    ``events`` are the body's events, one ``bytes`` each (the guide's dialect when not given);
    ``text`` is the answer: what a contestant must produce.
    """

    def __init__(self, tokens: list[str], events: list[bytes] | None = None) -> None:
        self.tokens = tokens
        self.text = "".join(tokens)
        if events is None:
            events = [
                b"data: " + json.dumps({"text": token}, ensure_ascii=False).encode() + b"\n\n"
                for token in tokens
            ]
            events.append(b"data: [DONE]\n\n")
        self.events = events
        self.body = b"".join(self.events)
        self.event_count = len(self.events)


def _compact(obj: object) -> bytes:
    """JSON as JavaScript's ``JSON.stringify`` writes it: no spaces, non-ASCII raw."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def _token(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.80:
        word = rng.choice(_WORDS) + rng.choice(_SUFFIXES)
        if rng.random() < 0.1:
            word = word.capitalize()
        return word if rng.random() < 0.08 else " " + word
    if roll < 0.89:
        return rng.choice(_PUNCTUATION)
    if roll < 0.95:
        return rng.choice(_NON_ASCII)
    return rng.choice(_ESCAPED)


def make_corpus(events: int = 100_000, seed: int = 20261125) -> Corpus:
    """A body of ``events`` token events plus ``[DONE]``, the same for a given seed."""
    rng = random.Random(seed)
    return Corpus([_token(rng) for _ in range(events)])


MODEL = "qwen2.5:14b"
CREATED = 1764086400


def make_openai_corpus(events: int = 100_000, seed: int = 20261125) -> Corpus:
    """The same tokens as ``make_corpus`` as the hosted OpenAI-compatible surface streams them:
    a role chunk, ``events`` token chunks, a finish chunk and ``data: [DONE]``."""
    tokens = make_corpus(events, seed).tokens
    head = {"id": "chatcmpl-9a3f0c2e4b7d", "object": "chat.completion.chunk", "created": CREATED}
    head["model"] = MODEL

    def chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return b"data: " + _compact({**head, "choices": [choice]}) + b"\n\n"

    rendered = [chunk({"role": "assistant", "content": ""})]
    rendered += [chunk({"content": token}) for token in tokens]
    rendered.append(chunk({}, "stop"))
    rendered.append(b"data: [DONE]\n\n")
    return Corpus(tokens, rendered)


def make_chat_corpus(
    events: int = 100_000,
    seed: int = 20261125,
    *,
    crlf: bool = False,
    event_first: bool = False,
    ping_every: int = 500,
) -> Corpus:
    """The same tokens as ``make_corpus`` in the chat surface's typed stream.

    ``crlf``: lines end with CRLF instead of LF. ``event_first``: the ``event:`` line comes before
    the ``id:`` line (the service writes ``id:`` first). A ``: ping`` comment follows every
    ``ping_every`` token events on average (at random, seeded): the service sends one every 15 s.
    """
    tokens = make_corpus(events, seed).tokens
    rng = random.Random(seed + 1)
    end = b"\r\n" if crlf else b"\n"

    def event(kind: str, data: object, event_id: int | None) -> bytes:
        lines = [b"event: " + kind.encode()]
        if event_id is not None:
            id_line = b"id: " + str(event_id).encode()
            lines = [*lines, id_line] if event_first else [id_line, *lines]
        lines.append(b"data: " + _compact(data))
        return end.join(lines) + end + end

    job = {
        "id": "5d0c8f0e-2b1a-4c3e-9f7d-1a2b3c4d5e6f",
        "status": "pending",
        "model_name": MODEL,
        "provider_id": None,
        "created_at": "2026-11-25T16:00:00Z",
    }
    meta = {
        "provider_node_id": "node_1",
        "provider_name": "gpu-box",
        "model": MODEL,
        "started_at": "2026-11-25T16:00:00Z",
        "engine": "ollama",
    }
    rendered = [event("job", job, None), event("meta", meta, 1)]
    for number, token in enumerate(tokens, start=2):
        rendered.append(event("token", {"text": token}, number))
        if rng.random() * ping_every < 1:
            rendered.append(b": ping" + end + end)
    done = {"text": "".join(tokens), "reason": "stop", "finished_at": "2026-11-25T16:05:00Z"}
    rendered.append(event("done", done, len(tokens) + 2))
    return Corpus(tokens, rendered)


def chunk_events(corpus: Corpus) -> list[bytes]:
    """One event per chunk: what a live generation looks like on the wire."""
    return list(corpus.events)


def chunk_fixed(corpus: Corpus, size: int = 16 * 1024) -> list[bytes]:
    """Fixed-size chunks (a bulk replay read at socket-buffer size)."""
    body = corpus.body
    return [body[i : i + size] for i in range(0, len(body), size)]


def chunk_random(corpus: Corpus, low: int = 1, high: int = 64, seed: int = 7) -> list[bytes]:
    """Chunks of random sizes in [low, high] bytes: cuts inside lines and UTF-8 characters."""
    rng = random.Random(seed)
    body = corpus.body
    chunks = []
    position = 0
    while position < len(body):
        step = rng.randint(low, high)
        chunks.append(body[position : position + step])
        position += step
    return chunks
