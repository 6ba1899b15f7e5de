"""The API surfaces the SDK speaks, behind one interface, and the rule that picks one.

An Infernet server may speak three HTTP surfaces for the same jobs:

- ``jobs``: the documented developer API of the streaming guide (``/api/v1/jobs``, Bearer token);
- ``openai``: the OpenAI-compatible surface (``/v1/chat/completions``, ``/v1/models``), whose
  token, when it needs one, is a resale key ``ifr_res_…``;
- ``chat``: the playground chat surface (``POST /api/chat``, ``GET /api/chat/stream/{id}``,
  ``GET /api/chat/{id}/status``), keyless, which Infernet's own JavaScript SDK and CLI use.

Each surface is a small sans-IO module: the requests it sends (``Call``), how it reads the answers
(job, job list, model list) and which event decoder reads its stream. The stream loop, the retries,
the deadlines and the fan-out never ask which surface they are on.

``ApiChoice`` is the choice rule (see ``InfernetClient``): ``api=`` or ``$INFERNET_API`` fixes the
surface; left unset, the client starts on the documented API (or on ``openai`` for a ``base_url``
ending in ``/v1``), and the first time a route of the surface in use answers an HTML 404 (the
server has no such route: the hosted service answers ``/api/v1/*`` that way today) it moves on to
the next surface and sends that request again there, which is safe because the 404 created
nothing. The order after ``jobs`` is ``chat`` then ``openai``, or ``openai`` then ``chat`` for a
resale key (which only ``/v1`` accepts). A surface that has answered anything else is kept for
good. Every move is logged at DEBUG; ``client.api`` tells the surface in use.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

from ..errors import NotSupportedError, SurfaceNotServedError

if TYPE_CHECKING:
    from ..events import EventDecoder

__all__ = [
    "API_ENV",
    "ApiChoice",
    "ApiName",
    "Call",
    "Surface",
    "check_trust_tier",
    "is_resale_key",
    "resolve_api",
    "surface_for",
]

logger = logging.getLogger("infernet_async")

ApiName = Literal["jobs", "openai", "chat"]
API_NAMES: tuple[ApiName, ...] = get_args(ApiName)
API_ENV = "INFERNET_API"
RESALE_KEY_PREFIX = "ifr_res_"
TRUST_TIERS = ("public", "verified", "trusted")
# Only the documented jobs API takes top_p.
TOP_P_ELSEWHERE = "leave it out, or use api='jobs'"
# The chat request's parameters that every surface maps (or refuses) itself; any other field is an
# extra one, which the jobs API passes on as it is and the other surfaces take or refuse by name.
CHAT_PARAMETERS = frozenset(
    {
        "model",
        "messages",
        "stream",
        "max_tokens",
        "temperature",
        "top_p",
        "node_id",
        "min_trust_tier",
    }
)


def is_resale_key(token: str | None) -> bool:
    """A reservation (resale) key, which only the OpenAI-compatible surface accepts."""
    return bool(token) and token is not None and token.startswith(RESALE_KEY_PREFIX)


def resolve_api(api: str | None, environ: Mapping[str, str]) -> ApiName | None:
    """``api``, else ``$INFERNET_API``; ``None`` (or ``auto``) leaves the choice to the server.

    Raises:
        ValueError: not one of ``jobs``, ``openai``, ``chat`` (or ``auto``).
    """
    value = api if api is not None else environ.get(API_ENV) or None
    if value is None:
        return None
    name = value.strip().lower()
    if name == "auto":
        return None
    for known in API_NAMES:
        if name == known:
            return known
    source = "api" if api is not None else API_ENV
    raise ValueError(f"{source} must be one of {', '.join(API_NAMES)} (or auto), not {value!r}")


@dataclass(frozen=True, slots=True)
class Call:
    """One request a surface wants sent: a path under the service origin, whether the token goes
    along, and how long a 429 that names no time (no header, no ``resetAt``) means on this route:
    the hosted OpenAI-compatible routes send none for their anonymous hourly limit, and retrying
    into it would only spend what is left of the budget."""

    method: str
    path: str
    body: Any = None
    params: Mapping[str, str] | None = None
    auth: bool = True
    quiet_429_wait: float | None = None


class Surface:
    """One API surface: the calls it makes and how it reads what comes back. Pure: no IO.

    ``chat_body`` takes the SDK's own request (the documented API's JSON: ``model``,
    ``messages``, ``max_tokens``, ``temperature``, ``top_p``, ``node_id``, ``min_trust_tier``,
    ``stream`` and extra fields) and returns the body this surface expects, or raises
    ``NotSupportedError`` for a parameter it would silently ignore: one it names in ``refused``,
    or an extra field it has no use for (``extra_fields``, ``ignored_field``). The ``read_*``
    methods turn a decoded JSON answer into the documented API's shape for the models in
    ``models``.
    """

    name: ClassVar[ApiName]
    title: ClassVar[str]
    # Whether a job's stream can be opened again by its id (reconnects, following a re-queue).
    resumable: ClassVar[bool]
    # The chat parameters this surface has no field for: each one's refusal and the advice, in the
    # order they are checked.
    refused: ClassVar[Mapping[str, tuple[str, str]]] = {}

    def unsupported(self, what: str, instead: str = "") -> NotSupportedError:
        others = ", ".join(f"api={n!r}" for n in API_NAMES if n != self.name)
        advice = instead or f"use {others}"
        return NotSupportedError(f"{self.title} {what}; {advice}", api=self.name)

    def refuse_unsupported(self, request: Mapping[str, Any]) -> None:
        """Refuse the parameters this surface would drop (``refused``), rather than drop them.

        Raises:
            NotSupportedError: one of them is set in ``request``.
        """
        for field, (what, instead) in self.refused.items():
            if request.get(field) is not None:
                raise self.unsupported(what, instead)

    def extra_fields(self, request: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
        """The request's fields beyond ``CHAT_PARAMETERS``, in order."""
        return ((name, value) for name, value in request.items() if name not in CHAT_PARAMETERS)

    def ignored_field(self, name: str) -> NotSupportedError:
        """The refusal of an extra field this surface would ignore."""
        return self.unsupported(f"does not take {name!r} (it would be ignored)", "leave it out")

    # -- requests ----------------------------------------------------------------------------------

    def chat_body(self, request: Mapping[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def stream_call(self, request: Mapping[str, Any]) -> Call:
        """The request that starts a streamed job: its answer is the stream itself, or a JSON
        submission that ``submission_job_id`` reads and ``job_stream_call`` follows."""
        raise NotImplementedError

    def submission_job_id(self, body: Any) -> str | None:
        """The job id in a JSON answer to ``stream_call`` (a stream to follow), else ``None``."""
        return None

    def job_stream_call(self, job_id: str) -> Call:
        raise self.unsupported("has no job ids to stream")

    def submit_call(self, request: Mapping[str, Any]) -> Call:
        raise self.unsupported("cannot submit a job without streaming it")

    def read_submitted(self, body: Any, request: Mapping[str, Any]) -> Any:
        return body

    def job_call(self, job_id: str) -> Call:
        raise self.unsupported("has no job ids to look up")

    def read_job(self, body: Any) -> Any:
        return body

    def list_jobs_call(self, params: Mapping[str, str]) -> Call:
        raise self.unsupported("cannot list jobs")

    def read_job_list(self, body: Any) -> Any:
        return body

    def models_call(self) -> Call:
        raise NotImplementedError

    def read_models(self, body: Any) -> Any:
        return body

    # -- the stream --------------------------------------------------------------------------------

    def decoder(self) -> EventDecoder:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<Surface {self.name}>"


def check_trust_tier(value: Any) -> str:
    if not isinstance(value, str) or value not in TRUST_TIERS:
        raise ValueError(f"min_trust_tier must be one of {', '.join(TRUST_TIERS)}, not {value!r}")
    return value


def surface_for(name: ApiName) -> Surface:
    # Imported here: each surface module imports this one for the base class.
    from ._chat import ChatSurface
    from ._jobs import JobsSurface
    from ._openai import OpenAISurface

    surfaces: dict[str, type[Surface]] = {
        "jobs": JobsSurface,
        "openai": OpenAISurface,
        "chat": ChatSurface,
    }
    return surfaces[name]()


class ApiChoice:
    """The surface a client speaks now, and the rule that moves it on (see the module docstring).

    Args:
        api: the surface the caller fixed, or ``None`` to find it.
        start: where to start when ``api`` is ``None`` (``jobs``, or ``openai`` for a base URL
            ending in ``/v1``).
        resale_key: the client's token is a resale key: ``openai`` comes before ``chat``.
        origin: the service origin, for messages.
    """

    __slots__ = ("_order", "_surface", "_tried", "explicit", "origin", "settled")

    def __init__(
        self,
        api: ApiName | None,
        *,
        start: ApiName = "jobs",
        resale_key: bool = False,
        origin: str = "",
    ) -> None:
        self.explicit = api is not None
        first: ApiName = api if api is not None else start
        rest: tuple[ApiName, ...] = ("openai", "chat") if resale_key else ("chat", "openai")
        self._order: list[ApiName] = [first] + [n for n in ("jobs", *rest) if n != first]
        self._surface = surface_for(first)
        self._tried: list[ApiName] = []
        self.origin = origin
        # A surface that answered as an API once is kept, whatever a proxy says later.
        self.settled = self.explicit

    @property
    def surface(self) -> Surface:
        return self._surface

    @property
    def name(self) -> ApiName:
        return self._surface.name

    def settle(self, surface: Surface) -> None:
        """``surface`` answered as an API: keep it."""
        if surface is self._surface and not self.settled:
            self.settled = True
            logger.debug("%s serves %s; keeping it", self.origin, surface.title)

    def not_served(self, surface: Surface, path: str, error: Exception) -> Surface:
        """A route of ``surface`` answered a page (HTML 404): the surface to try now.

        Raises:
            SurfaceNotServedError: the surface was fixed by the caller, or none is left to try.
        """
        if surface is not self._surface:
            return self._surface  # another request moved on already
        if surface.name not in self._tried:
            self._tried.append(surface.name)
        if not self.settled:
            for name in self._order:
                if name not in self._tried:
                    logger.debug(
                        "%s answered %s with a 404 page: it does not serve %s; trying api=%r",
                        self.origin,
                        path,
                        surface.title,
                        name,
                    )
                    self._surface = surface_for(name)
                    return self._surface
        others = [n for n in API_NAMES if n not in self._tried]
        tried = ", ".join(repr(n) for n in self._tried)
        advice = (
            f"; it may serve {' or '.join(f'api={n!r}' for n in others)}"
            if others
            else f" (tried {tried}): check base_url"
        )
        raise SurfaceNotServedError(
            f"{self.origin} answered {path} with a 404 page: it does not serve "
            f"{surface.title}{advice}",
            api=surface.name,
            status=getattr(error, "status", 404),
            headers=getattr(error, "headers", None),
        ) from error
