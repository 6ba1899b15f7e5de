"""What every command shares: the argument types, the connection arguments (``--base-url``,
``--api``, ``--proxy``, ``--allow-insecure``), the client for the configured control plane (or an
embedded one), the event loop, the output helpers, and errors as one clear line.

Rules: tokens and results go to stdout, notices and errors to stderr. An error is one line and a
non-zero exit (1 for a failed request or answer, 2 for bad usage), never a traceback; Ctrl-C exits
130. The loop is an ``asyncio.Runner`` owned by the command: its SIGINT handler cancels the
command's task, so a stream is closed and its partial text printed before the process exits. The
command line names its own flags and variables, never a Python argument.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from .._config import BASE_URL_ENV, TOKEN_ENV
from .._surfaces import API_ENV
from ..errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    InfernetError,
    InsecureTransportError,
    JobFailedError,
    ModelNotFoundError,
    NodeDisconnectedError,
    RateLimitError,
    StreamError,
)

if TYPE_CHECKING:
    from .._client import InfernetClient

__all__ = [
    "ALLOW_INSECURE_ENV",
    "DEFAULT_MODEL",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "JSON_HELP",
    "MODEL_ENV",
    "PROG",
    "UsageError",
    "add_answer_arguments",
    "add_command",
    "add_connection_arguments",
    "cell",
    "describe_error",
    "json_text",
    "notice",
    "number",
    "open_client",
    "positive_int",
    "proxy_url",
    "run",
    "table",
    "temperature",
    "whole_number",
    "write_out",
]

PROG = "infernet-async"
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a Ctrl-C
DEFAULT_MODEL = "qwen2.5:14b"
MODEL_ENV = "INFERNET_MODEL"
ALLOW_INSECURE_ENV = "INFERNET_ALLOW_INSECURE"
JSON_HELP = "print JSON: the SDK's models, the same keys on every control plane"


class UsageError(Exception):
    """A setting the command cannot run with: one line on stderr and exit 2, like argparse's."""


def add_command(
    subparsers: Any,
    name: str,
    handler: Callable[[argparse.Namespace], int],
    *,
    help: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """Add the subcommand ``name``, run by ``handler`` (parsed arguments in, an exit code out)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, help=help, description=description
    )
    parser.set_defaults(handler=handler)
    return parser


def notice(message: str) -> None:
    """One line for the person at the terminal, on stderr (stdout stays the answer alone)."""
    sys.stderr.write(f"{PROG}: {message}\n")
    sys.stderr.flush()


def write_out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def proxy_url(text: str) -> str:
    """argparse type for ``--proxy``: an ``http://`` proxy URL (checked here, so a typo is a usage
    error that does not echo a password)."""
    from .._proxy import parse_proxy_url

    try:
        parse_proxy_url(text, source="--proxy")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_answer_arguments(
    parser: argparse.ArgumentParser, *, max_tokens_help: str, temperature_help: str
) -> None:
    """``--max-tokens`` and ``--temperature``, as every command that asks for answers takes them."""
    parser.add_argument("--max-tokens", type=positive_int, metavar="N", help=max_tokens_help)
    parser.add_argument("--temperature", type=temperature, metavar="T", help=temperature_help)


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--proxy",
        metavar="URL",
        type=proxy_url,
        help=(
            "an http:// forward proxy for every request, http://[user:password@]host[:port] "
            "(https is tunnelled with CONNECT); default $HTTPS_PROXY, $HTTP_PROXY or $ALL_PROXY, "
            "except hosts in $NO_PROXY and loopback"
        ),
    )
    parser.add_argument(
        "--base-url",
        metavar="URL",
        help=f"the service origin (default ${BASE_URL_ENV}); the token is read from ${TOKEN_ENV}",
    )
    parser.add_argument(
        "--api",
        choices=("jobs", "openai", "chat", "auto"),
        help=(
            f"the API surface: jobs (/api/v1), openai (/v1) or chat (/api/chat); default "
            f"${API_ENV}, else auto: found from the server's answers"
        ),
    )
    parser.add_argument(
        "--allow-insecure",
        action="store_true",
        help=(
            "send the token over plain http:// to a host that is not loopback (a trusted network "
            f"only); or set ${ALLOW_INSECURE_ENV}=1"
        ),
    )


def _allow_insecure(args: argparse.Namespace) -> bool:
    if getattr(args, "allow_insecure", False):
        return True
    return os.environ.get(ALLOW_INSECURE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _client(
    base_url: str | None, token: str | None, args: argparse.Namespace, *, embedded: bool
) -> InfernetClient:
    """The client for ``args``; a setting it refuses is a ``UsageError`` naming our flags."""
    from .._client import InfernetClient

    # The embedded control plane is in this process, on loopback: --proxy is for a real one.
    proxy = None if embedded else getattr(args, "proxy", None)
    try:
        return InfernetClient(
            base_url,
            token,
            api=getattr(args, "api", None),
            proxy=proxy,
            allow_insecure=_allow_insecure(args),
        )
    except InsecureTransportError as exc:
        # The client's message speaks to Python callers; a shell user has a flag and a variable.
        raise UsageError(
            f"refusing to send the bearer token over plain http:// to {exc.host}; use https://, "
            f"or pass --allow-insecure (or set {ALLOW_INSECURE_ENV}=1) if this network is trusted"
        ) from None


@contextlib.asynccontextmanager
async def open_client(
    args: argparse.Namespace, *, embedded_caveat: str = ""
) -> AsyncIterator[InfernetClient]:
    """An open ``InfernetClient`` for the configured control plane, or for an embedded one.

    With neither a base URL nor a token configured there is nothing real to talk to, so the command
    runs on an embedded ``DevServer`` (emulated nodes, generated text) and says so on stderr, with
    ``embedded_caveat`` when the command has one.
    """
    base_url = getattr(args, "base_url", None) or os.environ.get(BASE_URL_ENV) or None
    token = os.environ.get(TOKEN_ENV) or None
    async with contextlib.AsyncExitStack() as stack:
        embedded = base_url is None and token is None
        if embedded:
            from ..devserver import DevServer

            dev = await stack.enter_async_context(DevServer())
            base_url, token = dev.base_url, dev.token
            notice(
                f"no {BASE_URL_ENV} or {TOKEN_ENV} configured: using the embedded control plane at "
                f"{dev.url} (emulated nodes; answers are generated text, not a model)"
                + (f"; {embedded_caveat}" if embedded_caveat else "")
            )
        client = _client(base_url, token, args, embedded=embedded)
        yield await stack.enter_async_context(client)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def describe_error(exc: BaseException) -> str:
    """What went wrong, in one line, with the next step when there is an obvious one."""
    if isinstance(exc, AuthenticationError):
        return f"{_one_line(exc.message)} (HTTP 401): check {TOKEN_ENV}"
    if isinstance(exc, ModelNotFoundError):
        return f"{_one_line(exc.message)} ('{PROG} models' lists the available models)"
    if isinstance(exc, RateLimitError):
        wait = f"; retry in {exc.retry_after:g} s" if exc.retry_after is not None else ""
        return f"rate limited: {_one_line(exc.message)}{wait}"
    if isinstance(exc, APIError):
        return _one_line(str(exc))
    if isinstance(exc, NodeDisconnectedError):
        return (
            f"the node went offline mid-answer ({exc.code or 'node_disconnected'}): "
            f"{_one_line(exc.message)}; the partial answer is above and the job was re-queued"
        )
    if isinstance(exc, StreamError):
        code = f" ({exc.code})" if exc.code else ""
        return f"the answer stopped early{code}: {_one_line(exc.message)}"
    if isinstance(exc, APITimeoutError):
        phase = f" ({exc.phase})" if exc.phase else ""
        return f"timed out{phase}: {_one_line(exc.message)}"
    if isinstance(exc, APIConnectionError):
        return f"cannot reach the control plane: {_one_line(str(exc))}"
    if isinstance(exc, JobFailedError):
        return f"job {exc.job_id} failed: {_one_line(exc.message)}"
    if isinstance(exc, InfernetError | ValueError):
        return _one_line(str(exc)) or type(exc).__name__
    return f"unexpected {type(exc).__name__}: {_one_line(str(exc))}"


def run(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run a command's coroutine on a fresh loop and turn its outcome into an exit code."""
    try:
        with asyncio.Runner() as runner:
            return runner.run(main())
    except UsageError as exc:
        notice(f"error: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        # The command printed what arrived while its task was being cancelled.
        notice("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`); point stdout at /dev/null so the interpreter's final
        # flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_ERROR
    except (InfernetError, ValueError) as exc:
        notice(f"error: {describe_error(exc)}")
        return EXIT_ERROR
    except Exception as exc:  # the CLI promises one line, never a traceback
        notice(f"error: {describe_error(exc)}")
        return EXIT_ERROR


def whole_number(text: str, *, low: int = 1, high: int | None = None) -> int:
    """argparse type for counts: a whole number from ``low`` to ``high`` (None: no bound)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if high is not None and not low <= value <= high:
        raise argparse.ArgumentTypeError(f"must be within {low}..{high}, got {value}")
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type for counts: a whole number of at least 1."""
    return whole_number(text)


def number(text: str) -> float:
    """argparse type for a number; range checks are the caller's (each says its own range)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def temperature(text: str) -> float:
    """argparse type for ``--temperature``: 0.0 to 2.0."""
    value = number(text)
    if not 0.0 <= value <= 2.0:
        raise argparse.ArgumentTypeError(f"must be within 0.0..2.0, got {value:g}")
    return value


# -- output for people: tables and JSON -----------------------------------------------------------


def cell(value: object) -> str:
    """One table cell: ``-`` for a missing value, floats short, datetimes to the second."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    if hasattr(value, "isoformat"):
        return str(value.isoformat(timespec="seconds"))
    return str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Aligned columns under ``header``, two spaces apart."""
    cells = [list(header)] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines) + "\n"


def json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2) + "\n"
