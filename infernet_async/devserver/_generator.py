"""Where answers come from: a deterministic local emulation, or a real upstream model server.

``LocalGenerator`` composes a plausible answer from the prompt with no model weights: it answers
simple arithmetic and a few capital-city questions, and otherwise writes template sentences around
the prompt's key words. The same prompt, model and seed always give the same tokens. Nodes report
its engine as ``local-emulation`` so nobody mistakes it for a model.

``UpstreamBackend`` relays generation from an OpenAI-compatible ``/v1/chat/completions`` stream or
an Ollama ``/api/chat`` stream (``--upstream URL``); the devserver then only adds the Infernet API
around it.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "Generation",
    "LocalGenerator",
    "UpstreamBackend",
    "UpstreamError",
    "tokenize",
]

UpstreamKind = Literal["auto", "openai", "ollama"]

LOCAL_ENGINE = "local-emulation"

_TOKEN_RE = re.compile(r"\s*(?:\w+|[^\w\s])")
_WORD_RE = re.compile(r"[A-Za-z][A-Za-z'-]{3,}")
_ARITHMETIC_RE = re.compile(r"(-?\d+(?:\.\d+)?)\s*([-+*/x×])\s*(-?\d+(?:\.\d+)?)")
_CAPITALS = {
    "france": "Paris",
    "germany": "Berlin",
    "italy": "Rome",
    "spain": "Madrid",
    "japan": "Tokyo",
    "canada": "Ottawa",
    "australia": "Canberra",
    "portugal": "Lisbon",
    "england": "London",
    "kenya": "Nairobi",
}
_STOPWORDS = frozenset(
    (
        "about",
        "above",
        "after",
        "again",
        "against",
        "also",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "could",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "explain",
        "from",
        "further",
        "have",
        "having",
        "here",
        "into",
        "itself",
        "just",
        "more",
        "most",
        "once",
        "only",
        "other",
        "over",
        "same",
        "should",
        "some",
        "such",
        "tell",
        "than",
        "that",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "under",
        "until",
        "very",
        "want",
        "what",
        "when",
        "where",
        "which",
        "while",
        "with",
        "would",
        "your",
        "please",
        "sentences",
        "three",
        "simple",
        "describe",
        "write",
        "give",
        "short",
        "long",
        "how",
        "why",
        "learn",
        "learns",
        "work",
        "works",
        "make",
        "makes",
        "happen",
        "happens",
        "mean",
        "means",
        "help",
        "helps",
        "need",
        "know",
        "used",
        "using",
    )
)
_OPENERS = (
    "{Topic} comes down to a few ideas that fit together.",
    "Here is a short overview of {topic}.",
    "Good question: {topic} is easier to follow one step at a time.",
    "In brief, {topic} can be explained through its main parts.",
)
_BODY = (
    "The first idea is {a}: it sets the frame for everything else.",
    "{A} matters because it connects directly to {b}.",
    "A useful way to picture {a} is as a process that repeats and improves.",
    "Most explanations of {topic} start with {a} and then turn to {b}.",
    "In practice, {a} and {b} are adjusted together rather than one at a time.",
    "People often overlook {b}, yet it explains why {a} behaves the way it does.",
    "Small changes in {a} can have a large effect on {b}.",
    "Measuring {b} carefully is how you check that {a} is working.",
    "The details vary, but the pattern of {a} leading to {b} holds in most cases.",
)
_CLOSERS = (
    "In short, {a} and {b} are the two ideas to remember.",
    "That is the core of {topic}; the rest is refinement.",
    "Put together, these steps make {topic} predictable and easy to reason about.",
)
_FILLER = (
    "Each step builds on the one before it.",
    "The same idea appears again at a larger scale.",
    "Examples make the pattern easier to see.",
    "This is why the approach works well in practice.",
)


def tokenize(text: str) -> list[str]:
    """Split text into token-sized pieces (a word or a punctuation mark with its leading spaces)."""
    return _TOKEN_RE.findall(text)


def _last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return str(message.get("content", ""))
    return str(messages[-1].get("content", "")) if messages else ""


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


class Generation(Protocol):
    """One running generation: an async iterator of text pieces plus its finish reason."""

    reason: str
    planned_tokens: int | None

    def __aiter__(self) -> Generation: ...

    async def __anext__(self) -> str: ...

    async def aclose(self) -> None: ...


class _ListGeneration:
    def __init__(self, tokens: list[str], reason: str) -> None:
        self._tokens = tokens
        self._index = 0
        self.reason = reason
        self.planned_tokens: int | None = len(tokens)

    def __aiter__(self) -> _ListGeneration:
        return self

    async def __anext__(self) -> str:
        if self._index >= len(self._tokens):
            raise StopAsyncIteration
        token = self._tokens[self._index]
        self._index += 1
        return token

    async def aclose(self) -> None:
        self._index = len(self._tokens)


class LocalGenerator:
    """Deterministic answers from the prompt and the seed (local emulation, no model)."""

    engine = LOCAL_ENGINE
    paced = True

    def __init__(self, *, seed: int = 0, answer_tokens: int | None = None) -> None:
        self.seed = seed
        self.answer_tokens = answer_tokens

    def compose(self, model: str, messages: Sequence[Mapping[str, Any]]) -> str:
        """The full answer text for a prompt, before any length limit."""
        prompt = _last_user_text(messages)
        digest = hashlib.sha256(f"{self.seed}\x00{model}\x00{prompt}".encode()).digest()
        rng = random.Random(int.from_bytes(digest[:8], "big"))
        special = self._special(prompt)
        if special is not None:
            return special
        words: list[str] = []
        seen: set[str] = set()
        for match in _WORD_RE.finditer(prompt):
            word = match[0].strip("'-")
            lowered = word.lower()
            if lowered in _STOPWORDS or lowered in seen:
                continue
            seen.add(lowered)
            # Keep proper nouns ("Paris") but not a capital that only starts a sentence.
            initial = prompt[: match.start()].rstrip()[-1:] in ("", ".", "!", "?")
            words.append(word if word[0].isupper() and not initial else lowered)
        topic = " ".join(words[:3]) if words else "this topic"
        a = words[1] if len(words) > 1 else (words[0] if words else "the basics")
        b = words[2] if len(words) > 2 else "the result"

        def fill(template: str) -> str:
            return template.format(
                topic=topic, Topic=topic[:1].upper() + topic[1:], a=a, A=a[:1].upper() + a[1:], b=b
            )

        body = rng.sample(_BODY, k=rng.randint(2, 4))
        sentences = [fill(rng.choice(_OPENERS)), *map(fill, body), fill(rng.choice(_CLOSERS))]
        return " ".join(sentences)

    @staticmethod
    def _special(prompt: str) -> str | None:
        match = _ARITHMETIC_RE.search(prompt)
        if match is not None:
            left, op, right = float(match[1]), match[2], float(match[3])
            if op == "+":
                result = left + right
            elif op == "-":
                result = left - right
            elif op in "*x×":
                result = left * right
            elif right == 0:
                return f"{_number(left)} / 0 is undefined: division by zero has no value."
            else:
                result = left / right
            shown = {"x": "×", "*": "×"}.get(op, op)
            return f"{_number(left)} {shown} {_number(right)} = {_number(result)}."
        lowered = prompt.lower()
        if "capital" in lowered:
            for country, city in _CAPITALS.items():
                if country in lowered:
                    return f"{city} is the capital of {country.title()}."
        return None

    def tokens(
        self, model: str, messages: Sequence[Mapping[str, Any]], max_tokens: int
    ) -> tuple[list[str], str]:
        """The answer as tokens, cut to ``answer_tokens`` (exactly) and ``max_tokens``; and the
        reason."""
        tokens = tokenize(self.compose(model, messages))
        target = self.answer_tokens
        if target is not None:
            index = 0
            while len(tokens) < target:
                tokens.extend(tokenize(" " + _FILLER[index % len(_FILLER)]))
                index += 1
            tokens = tokens[:target]
        if len(tokens) > max_tokens:
            return tokens[:max_tokens], "length"
        return tokens, "stop"

    async def start(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        max_tokens: int,
        temperature: float,
        top_p: float,
    ) -> Generation:
        tokens, reason = self.tokens(model, messages, max_tokens)
        return _ListGeneration(tokens, reason)


class UpstreamError(Exception):
    """The upstream model server failed or answered with an error."""


def resolve_upstream(
    url: str, kind: UpstreamKind = "auto"
) -> tuple[Literal["openai", "ollama"], str, str]:
    """Work out the upstream's kind, its chat endpoint and its model-list endpoint from a base URL.

    ``http://host:11434`` or ``.../api`` is Ollama; ``.../v1`` (or anything else) is
    OpenAI-compatible. A full chat endpoint URL is accepted as is.
    """
    base = url.rstrip("/")
    if kind == "auto":
        ollama_like = base.endswith(("/api", "/api/chat")) or (
            base.endswith(":11434") and "/v1" not in base
        )
        kind = "ollama" if ollama_like else "openai"
    if kind == "ollama":
        root = base.removesuffix("/api/chat").removesuffix("/api")
        return "ollama", root + "/api/chat", root + "/api/tags"
    root = base.removesuffix("/chat/completions")
    if not root.endswith("/v1"):
        root += "/v1"
    return "openai", root + "/chat/completions", root + "/models"


class _UpstreamGeneration:
    """Reads an upstream stream line by line; OpenAI SSE (``data: {...}``) or Ollama NDJSON."""

    def __init__(self, response: aiohttp.ClientResponse, kind: str, max_tokens: int) -> None:
        self._response = response
        self._kind = kind
        self._buffer = b""
        self._lines: list[bytes] = []
        self._eof = False
        self._remaining = max_tokens
        self.reason = "stop"
        self.planned_tokens: int | None = None

    def __aiter__(self) -> _UpstreamGeneration:
        return self

    async def _next_line(self) -> bytes | None:
        while not self._lines:
            if self._eof:
                return None
            import aiohttp

            try:
                chunk = await self._response.content.readany()
            except aiohttp.ClientError as exc:
                raise UpstreamError(f"upstream stream broke: {exc}") from exc
            if not chunk:
                self._eof = True
                if self._buffer:
                    self._lines.append(self._buffer)
                    self._buffer = b""
                continue
            self._buffer += chunk
            *complete, self._buffer = self._buffer.split(b"\n")
            self._lines.extend(line.rstrip(b"\r") for line in complete)
        return self._lines.pop(0)

    async def __anext__(self) -> str:
        if self._remaining <= 0:
            self.reason = "length"
            await self.aclose()
            raise StopAsyncIteration
        while True:
            line = await self._next_line()
            if line is None:
                await self.aclose()
                raise StopAsyncIteration
            text = self._parse(line.decode("utf-8", "replace"))
            if text is None:
                continue
            if text == "":
                continue
            self._remaining -= 1
            return text

    def _parse(self, line: str) -> str | None:
        """The text in one line, ``None`` to skip it; raises ``StopAsyncIteration`` at the end."""
        if self._kind == "openai":
            if not line.startswith("data:"):
                return None
            data = line[5:].strip()
            if data == "[DONE]":
                raise StopAsyncIteration
            event = _loads(data)
            if "error" in event:
                raise UpstreamError(f"upstream error: {event['error']}")
            choices = event.get("choices") or [{}]
            choice = choices[0] if isinstance(choices[0], dict) else {}
            if choice.get("finish_reason"):
                self.reason = str(choice["finish_reason"])
            content = (choice.get("delta") or {}).get("content")
            return content if isinstance(content, str) else None
        if not line.strip():
            return None
        event = _loads(line)
        if "error" in event:
            raise UpstreamError(f"upstream error: {event['error']}")
        content = (event.get("message") or {}).get("content")
        if event.get("done"):
            self.reason = str(event.get("done_reason") or "stop")
            if isinstance(content, str) and content:
                self._remaining = 0
                return content
            raise StopAsyncIteration
        return content if isinstance(content, str) else None

    async def aclose(self) -> None:
        self._response.release()


def _loads(data: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except json.JSONDecodeError as exc:
        raise UpstreamError(f"upstream sent invalid JSON: {data[:80]!r}") from exc
    if not isinstance(value, dict):
        raise UpstreamError(f"upstream sent a non-object: {data[:80]!r}")
    return value


class UpstreamBackend:
    """Relays generation to a real model server; the devserver adds the Infernet API around it."""

    paced = False

    def __init__(
        self,
        url: str,
        session: aiohttp.ClientSession,
        *,
        kind: UpstreamKind = "auto",
        api_key: str | None = None,
        model: str | None = None,
    ) -> None:
        self.kind, self.chat_url, self.models_url = resolve_upstream(url, kind)
        self.engine = f"upstream-{self.kind}"
        self._session = session
        self._api_key = api_key
        self._model = model

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    async def list_models(self) -> list[str]:
        """The upstream's model names (empty when it cannot say)."""
        async with self._session.get(self.models_url, headers=self._headers()) as response:
            if response.status != 200:
                return []
            body = await response.json(content_type=None)
        if self.kind == "ollama":
            entries, key = body.get("models", []), "name"
        else:
            entries, key = body.get("data", []), "id"
        return [str(entry[key]) for entry in entries if isinstance(entry, dict) and key in entry]

    async def start(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        max_tokens: int,
        temperature: float,
        top_p: float,
    ) -> Generation:
        """Open the upstream stream; raises ``UpstreamError`` when it answers with an error."""
        import aiohttp

        name = self._model or model
        chat = [{"role": m.get("role"), "content": m.get("content")} for m in messages]
        if self.kind == "ollama":
            payload: dict[str, Any] = {
                "model": name,
                "messages": chat,
                "stream": True,
                "options": {"num_predict": max_tokens, "temperature": temperature, "top_p": top_p},
            }
        else:
            payload = {
                "model": name,
                "messages": chat,
                "stream": True,
                "max_tokens": max_tokens,
                "temperature": temperature,
                "top_p": top_p,
            }
        try:
            response = await self._session.post(
                self.chat_url, json=payload, headers=self._headers()
            )
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream unreachable: {exc}") from exc
        if response.status != 200:
            text = (await response.text())[:200]
            response.release()
            raise UpstreamError(f"upstream answered {response.status}: {text}")
        return _UpstreamGeneration(response, self.kind, max_tokens)
