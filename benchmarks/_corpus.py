"""Seeded token-stream corpora for the benchmarks: realistic bodies and the three chunkings.

A body is what the control plane sends for one long answer in the guide's data-only dialect:
``data: {"text": "<token>"}`` events (rendered like Python's ``json.dumps``, non-ASCII kept raw
as JavaScript's ``JSON.stringify`` does) and a final ``data: [DONE]``. Tokens look like an LLM's
output: mostly short words with a leading space, punctuation, newlines and quotes (JSON escapes),
non-ASCII words and emoji, now and then a tab or a backslash.
"""

from __future__ import annotations

import json
import random

__all__ = ["Corpus", "chunk_events", "chunk_fixed", "chunk_random", "make_corpus"]

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
    """One rendered body and the facts a contestant's output is checked against."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.text = "".join(tokens)
        self.events = [
            b"data: " + json.dumps({"text": token}, ensure_ascii=False).encode() + b"\n\n"
            for token in tokens
        ]
        self.events.append(b"data: [DONE]\n\n")
        self.body = b"".join(self.events)
        self.event_count = len(self.events)


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
