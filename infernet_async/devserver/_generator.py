"""Where answers come from by default: a deterministic local emulation, no model weights.

``LocalGenerator`` composes a plausible answer from the prompt: it answers simple arithmetic and a
few capital-city questions, and otherwise writes template sentences around the prompt's key words.
The same prompt, model and seed always give the same tokens. Nodes report its engine as
``local-emulation`` so nobody mistakes it for a model. ``_upstream.py`` is the other source.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

__all__ = ["LOCAL_ENGINE", "Generation", "GenerationRequest", "LocalGenerator", "tokenize"]

LOCAL_ENGINE = "local-emulation"

_TOKEN_RE = re.compile(r"\s*(?:\w+|[^\w\s])")
_WORD_RE = re.compile(r"[A-Za-z][A-Za-z'-]{2,}")
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
# Words that make poor topics: question words, filler and common verbs.
_STOPWORDS = frozenset(
    re.findall(
        r"\S+",
        """
about above after again against also because been before being below between both could does
doing down during each explain from further have having here into itself just more most once
only other over same should some such tell than that their them then there these they this those
through under until very want what when where which while with would your please sentences three
simple describe write give short long how why learn learns work works make makes happen happens
mean means help helps need know used using the and are you for can but not was its any all who
did has had get got use may one two our out new now way see say its tell me
""",
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
    "The role of {a} matters because it connects directly to {b}.",
    "A useful way to picture {a} is as a process that repeats and improves.",
    "Most explanations of {topic} start with {a} and then turn to {b}.",
    "In practice, {a} and {b} are adjusted together rather than one at a time.",
    "People often overlook {b}, yet it explains a lot about {a}.",
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


class GenerationRequest(Protocol):
    """What a generation is asked for (a ``Job`` is one)."""

    @property
    def model(self) -> str: ...

    @property
    def messages(self) -> Sequence[Mapping[str, Any]]: ...

    @property
    def max_tokens(self) -> int: ...

    @property
    def temperature(self) -> float: ...

    @property
    def top_p(self) -> float: ...


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

    async def start(self, request: GenerationRequest) -> Generation:
        tokens, reason = self.tokens(request.model, request.messages, request.max_tokens)
        return _ListGeneration(tokens, reason)
