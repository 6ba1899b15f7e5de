"""Every exception the SDK raises, in one tree.

    InfernetError
    ├── APIError                  an error answer (.status, .code, .message)
    │   ├── AuthenticationError   401 unauthorized (a resale key's invalid_key too)
    │   ├── BadRequestError       400 bad_request
    │   ├── PermissionDeniedError 403 (a resale key outside its reservation's time)
    │   ├── NotFoundError         404 without a known code (an unknown job id)
    │   │   ├── ModelNotFoundError    404 model_not_found
    │   │   └── SurfaceNotServedError an HTML 404 on a route of the API surface in use (.api)
    │   ├── RateLimitError        429 rate_limited (.retry_after, .limit_type, .limit_scope)
    │   ├── InternalServerError   500 internal_error, and other 5xx
    │   └── NoCapacityError       503 no_capacity, no node serves the model (.available_models)
    ├── JobFailedError            a job ended in the failed state (.job_id, .code, .message)
    │   └── JobTimeoutError       ... because it exceeded the server's job time limit
    ├── StreamError               a stream ended without [DONE] (.partial_text, .job_id, .code)
    │   ├── NodeDisconnectedError the node went offline mid-stream; the job was re-queued
    │   ├── IncompleteStreamError the connection ended without [DONE] and without an error event
    │   └── AnswerTooLargeError   the answer grew past the client's max_answer_bytes (.limit)
    ├── APIConnectionError        no answer at all (DNS, refused, reset, out of file descriptors)
    │   └── APITimeoutError       a configured timeout fired (also a TimeoutError)
    ├── DecodeError               bytes that cannot be decoded as a stream (also a ValueError)
    │   └── EventTooLargeError    one line or event exceeds the decoder's size limit
    ├── NotSupportedError         the API surface in use cannot do this (also a ValueError; .api)
    └── InsecureTransportError    a token would go over plain http:// off loopback (a ValueError)

Any other in-stream error code is a plain StreamError. Connection and timeout errors are siblings
of APIError, not subclasses: they carry no status and no body. The class of an API error comes from
the body's ``error`` code; the HTTP status decides only when the body has no code (a proxy's HTML
page, say). Three body shapes are read, whichever surface sent them: the documented
``{"error": "<code>", "error_message"}``, the OpenAI-compatible ``{"error": {"message", "type",
"code"}}`` (``code`` a string such as ``invalid_key``, or the HTTP status as a number, which is no
code) and the chat surface's ``{"error": "<a sentence>", "detail"}``; the message is always the
server's own words, never a dump of the body (reading the body is ``_error_bodies``'s). This module
imports nothing outside the standard library, so the sans-IO layers can raise these errors too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._error_bodies import cut_message, excerpt, header_value, read_error_body

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AnswerTooLargeError",
    "AuthenticationError",
    "BadRequestError",
    "DecodeError",
    "EventTooLargeError",
    "INCOMPLETE_STREAM_CODE",
    "IncompleteStreamError",
    "InfernetError",
    "InsecureTransportError",
    "InternalServerError",
    "JobFailedError",
    "JobTimeoutError",
    "ModelNotFoundError",
    "NoCapacityError",
    "NodeDisconnectedError",
    "NotFoundError",
    "NotSupportedError",
    "PermissionDeniedError",
    "RateLimitError",
    "StreamError",
    "SurfaceNotServedError",
    "error_for_response",
    "stream_error_for_code",
]


class InfernetError(Exception):
    """The root of every error this SDK raises."""


class APIError(InfernetError):
    """The control plane answered a request with an error status."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str | None = None,
        body: object = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.body = body
        self.headers: Mapping[str, str] = dict(headers or {})

    def __str__(self) -> str:
        label = f"{self.status} {self.code}" if self.code else str(self.status)
        return f"[{label}] {self.message}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, "
            f"message={self.message!r})"
        )


class AuthenticationError(APIError):
    """The bearer token is missing or invalid (401 ``unauthorized``)."""


class BadRequestError(APIError):
    """The request's parameters were invalid (400 ``bad_request``)."""


class PermissionDeniedError(APIError):
    """The request is not allowed now (403): a resale key before or after its reservation, or
    a cancelled one (``reservation_upcoming``, ``reservation_ended``, ``reservation_cancelled``).
    """


class NotFoundError(APIError):
    """The resource does not exist or is not visible to this token (404)."""


class ModelNotFoundError(NotFoundError):
    """The requested model is not registered (404 ``model_not_found``)."""


class SurfaceNotServedError(NotFoundError):
    """The server answered a route of the API surface in use with a page, not the API: it does
    not serve that surface (the hosted service answers the documented ``/api/v1`` routes this way
    today).

    ``api`` is the surface that was tried; the message names the others. With ``api`` left unset
    the client moves on to another surface by itself before this is raised (see
    ``InfernetClient``).
    """

    def __init__(
        self,
        message: str,
        *,
        api: str,
        status: int = 404,
        body: object = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, status=status, body=body, headers=headers)
        self.api = api


class RateLimitError(APIError):
    """Too many requests for this token (429 ``rate_limited``).

    ``retry_after`` is the number of seconds the server asked us to wait, when it said.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 429,
        code: str | None = "rate_limited",
        body: object = None,
        headers: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code, body=body, headers=headers)
        self.retry_after = retry_after
        self.limit_type: str | None = header_value(self.headers, "X-Infernet-Limit-Type")
        """Which limit a resale key hit, where the server says: ``rps``, ``concurrency`` or
        ``tokens`` (``X-Infernet-Limit-Type``); ``None`` when it does not say."""
        self.limit_scope: str | None = header_value(self.headers, "X-Infernet-Limit-Scope")
        """Whose limit it was: ``key`` (this key's own) or ``shared`` (the reservation's pool)
        (``X-Infernet-Limit-Scope``); ``None`` when the server does not say."""


class InternalServerError(APIError):
    """The control plane failed (500 ``internal_error`` or another 5xx)."""


class NoCapacityError(APIError):
    """No node has capacity for the model right now (503 ``no_capacity``, or no node serves the
    model); retry with backoff. No job was created.

    ``available_models`` lists the models the server said it does serve (the OpenAI-compatible
    surface names them), empty when it names none.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 503,
        code: str | None = None,
        body: object = None,
        headers: Mapping[str, str] | None = None,
        available_models: list[str] | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code, body=body, headers=headers)
        self.available_models: list[str] = list(available_models or [])


class JobFailedError(InfernetError):
    """A job ended in the ``failed`` state."""

    def __init__(
        self, message: str, *, job_id: str | None, code: str | None = None, job: object = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.job_id = job_id
        self.code = code
        self.job = job


class JobTimeoutError(JobFailedError):
    """A job failed with ``timeout``: it exceeded the server's job time limit."""


class StreamError(InfernetError):
    """A token stream ended before ``[DONE]``; ``partial_text`` is everything received by then."""

    def __init__(
        self,
        message: str,
        *,
        partial_text: str = "",
        job_id: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.partial_text = partial_text
        self.job_id = job_id
        self.code = code

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(message={self.message!r}, code={self.code!r}, "
            f"job_id={self.job_id!r}, partial_text=<{len(self.partial_text)} chars>)"
        )


class NodeDisconnectedError(StreamError):
    """The node went offline mid-stream (``node_disconnected``); the job was re-queued."""


class IncompleteStreamError(StreamError):
    """The connection ended without ``[DONE]`` and without an error event."""


class AnswerTooLargeError(StreamError):
    """The answer grew past the client's ``max_answer_bytes`` and the stream was closed there.

    ``partial_text`` is the answer up to the token that would have passed the limit; ``limit`` is
    the limit, in UTF-8 bytes. A server streaming without end cannot make the client hold more.
    """

    def __init__(
        self, message: str, *, limit: int, partial_text: str = "", job_id: str | None = None
    ) -> None:
        super().__init__(message, partial_text=partial_text, job_id=job_id)
        self.limit = limit


class APIConnectionError(InfernetError):
    """The request did not get an answer: DNS failure, refused or reset connection, no descriptors.

    ``request_sent`` is ``False`` when the failure happened before the request left this process
    (so the server cannot have acted on it), ``True`` when it happened after, ``None`` when unknown.
    A failed submission is retried only when it is ``False``.
    """

    def __init__(self, message: str, *, request_sent: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_sent = request_sent


class APITimeoutError(APIConnectionError, TimeoutError):
    """A configured timeout fired (connect, idle read, time to first token, stall or total).

    When it fires mid-stream, ``partial_text`` holds what arrived before it.
    """

    def __init__(
        self,
        message: str,
        *,
        partial_text: str = "",
        job_id: str | None = None,
        phase: str | None = None,
        request_sent: bool | None = None,
    ) -> None:
        super().__init__(message, request_sent=request_sent)
        self.partial_text = partial_text
        self.job_id = job_id
        self.phase = phase


class InsecureTransportError(InfernetError, ValueError):
    """The bearer token would go over plain ``http://`` to a host that is not loopback, and the
    client was not built with ``allow_insecure=True``; raised when the client is built.

    ``host`` is the host refused. The CLI names its own flag for it (``--allow-insecure``).
    """

    def __init__(self, host: str | None) -> None:
        self.host = host
        super().__init__(
            f"refusing to send the bearer token over plain http:// to {host}; "
            "use https://, or pass allow_insecure=True if this network is trusted"
        )


class NotSupportedError(InfernetError, ValueError):
    """The API surface in use cannot do what was asked (job ids on the OpenAI-compatible
    surface, a parameter it would silently ignore); raised before anything is sent.

    ``api`` names the surface (``"jobs"``, ``"openai"`` or ``"chat"``).
    """

    def __init__(self, message: str, *, api: str) -> None:
        super().__init__(message)
        self.message = message
        self.api = api


class DecodeError(InfernetError, ValueError):
    """Bytes that cannot be decoded as an event stream."""


class EventTooLargeError(DecodeError):
    """One line or one event grew past the decoder's size limit."""

    def __init__(self, message: str, *, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


_API_ERRORS_BY_CODE: dict[str, type[APIError]] = {
    "unauthorized": AuthenticationError,
    "bad_request": BadRequestError,
    "model_not_found": ModelNotFoundError,
    "not_found": NotFoundError,
    "rate_limited": RateLimitError,
    "internal_error": InternalServerError,
    "no_capacity": NoCapacityError,
}

_API_ERRORS_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    429: RateLimitError,
    500: InternalServerError,
    503: NoCapacityError,
}

# The code a decoder gives a stream that ended without its surface's clean end, although the
# server closed it in an orderly way (an OpenAI ``[DONE]`` with no finish chunk before it).
INCOMPLETE_STREAM_CODE = "incomplete_stream"

_STREAM_ERRORS_BY_CODE: dict[str, type[StreamError]] = {
    "node_disconnected": NodeDisconnectedError,
    INCOMPLETE_STREAM_CODE: IncompleteStreamError,
}


def _api_error_class(status: int, code: str | None) -> type[APIError]:
    if code is not None and code in _API_ERRORS_BY_CODE:
        return _API_ERRORS_BY_CODE[code]
    by_status = _API_ERRORS_BY_STATUS.get(status)
    # A 503 with a code we do not know is not known to be "no capacity".
    if by_status is not None and (code is None or by_status is not NoCapacityError):
        return by_status
    if status >= 500:
        return InternalServerError
    return APIError


def error_for_response(
    status: int,
    body: Any,
    *,
    text: str = "",
    headers: Mapping[str, str] | None = None,
    retry_after: float | None = None,
) -> APIError:
    """Build the most specific ``APIError`` for an error response; never raises.

    Args:
        status: the HTTP status.
        body: the decoded JSON body, or ``None`` when the body was not JSON.
        text: the raw body text, used for an excerpt when the body is not an error object.
        headers: the response headers, kept on the error.
        retry_after: seconds to wait, already worked out by the caller (for 429).
    """
    code, message, available = read_error_body(body)
    if message is None and isinstance(body, Mapping):
        # JSON with no message in any known place: the body stays on ``.body``, not in the text.
        message = f"HTTP {status}" + (f" ({code})" if code else " with no error message")
    if message is None:
        shown = excerpt(text)
        message = f"HTTP {status}: {shown}" if shown else f"HTTP {status}"
    cls = _api_error_class(status, code)
    if issubclass(cls, RateLimitError):
        return cls(
            message, status=status, code=code, body=body, headers=headers, retry_after=retry_after
        )
    if issubclass(cls, NoCapacityError):
        if code is None and isinstance(body, Mapping) and body.get("error"):
            # The API's own refusal (the OpenAI-compatible and chat surfaces give no code word),
            # not a proxy's page: no job was created, as with the documented ``no_capacity``.
            code = "no_capacity"
        return cls(
            message,
            status=status,
            code=code,
            body=body,
            headers=headers,
            available_models=available,
        )
    return cls(message, status=status, code=code, body=body, headers=headers)


def stream_error_for_code(
    code: str | None, message: str, *, partial_text: str, job_id: str | None
) -> StreamError:
    """Build the ``StreamError`` for an in-stream error event (the HTTP status there is 200).

    The message comes from the server and may be as large as an event (megabytes): it is cut
    (``_error_bodies.cut_message``) so that a log line or a traceback stays readable.
    """
    message = cut_message(message)
    cls = _STREAM_ERRORS_BY_CODE.get(code or "", StreamError)
    return cls(message, partial_text=partial_text, job_id=job_id, code=code)
