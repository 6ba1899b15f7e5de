"""One ``aclose`` contract for every resource the SDK hands out (trio's ``AsyncResource``).

``async with`` returns the resource and always ends in ``aclose()``; ``aclose()`` releases even when
cancelled and is a no-op the second time. Subclasses implement ``aclose()`` and, where entering does
work (opening a session, sending a request, binding a port), override ``__aenter__``.
"""

from __future__ import annotations

import abc
from types import TracebackType
from typing import Self

__all__ = ["AsyncResource"]


class AsyncResource(abc.ABC):
    __slots__ = ()

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release the resource; idempotent, and it releases even when the caller is cancelled."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
