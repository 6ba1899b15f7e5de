"""The ``serve`` subcommand: run the local control plane until Ctrl-C.

Imports ``aiohttp.web`` only when the command runs, so building the parser stays cheap. It prints
the URLs of the three surfaces (the jobs API, the OpenAI-compatible ``/v1`` and the playground
chat), the token (and the ``export`` lines the SDK reads) to stdout, then serves until SIGINT or
SIGTERM. A value out of range is a usage error (one line, exit 2), caught by the argument types
before the server is built.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import signal
import sys
from typing import Any

from ._plumbing import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    add_command,
    number,
    positive_int,
    whole_number,
)

__all__ = ["register"]

_PROG = "infernet-async serve"
_HELP = "run a local Infernet control plane (emulated nodes, no account or GPU needed)"
_DESCRIPTION = (
    "Run a local Infernet control plane on loopback. Answers come from a deterministic "
    "local emulation (no model) unless --upstream points at an OpenAI-compatible or "
    "Ollama server."
)


def _port(text: str) -> int:
    return whole_number(text, low=0, high=65535)


def _number(text: str) -> float:
    value = number(text)
    # float() takes "nan" and "inf"; neither is a speed, a delay or a chance.
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _positive_number(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value:g}")
    return value


def _non_negative_number(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value:g}")
    return value


def _probability(text: str) -> float:
    value = _number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within 0..1, got {value:g}")
    return value


def _resale_key(text: str) -> tuple[str, tuple[str, ...]]:
    key, sep, models = text.partition("=")
    names = tuple(m.strip() for m in models.split(",") if m.strip())
    if not sep or not key.startswith("ifr_res_") or len(key) == len("ifr_res_") or not names:
        raise argparse.ArgumentTypeError(
            f"expected KEY=model1,model2 with a key starting 'ifr_res_', got {text!r}"
        )
    return key, names


def register(subparsers: Any) -> None:
    """Add ``serve`` to the ``infernet-async`` command line."""
    parser = add_command(subparsers, "serve", _handle, help=_HELP, description=_DESCRIPTION)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=_port, default=8080, help="port (default 8080; 0 = any free)"
    )
    parser.add_argument(
        "--token",
        action="append",
        dest="tokens",
        metavar="TOKEN",
        help="accepted bearer token (repeatable; default dev-token)",
    )
    parser.add_argument(
        "--dialect", choices=("data", "typed"), default="data", help="stream dialect"
    )
    parser.add_argument(
        "--heartbeat",
        type=_non_negative_number,
        default=15.0,
        metavar="S",
        help="seconds between ': ping' (0 = off)",
    )
    parser.add_argument(
        "--job-timeout",
        type=_positive_number,
        default=300.0,
        metavar="S",
        help="server-side job time limit",
    )
    parser.add_argument(
        "--upstream", metavar="URL", help="OpenAI-compatible (/v1) or Ollama server"
    )
    parser.add_argument(
        "--upstream-kind", choices=("auto", "openai", "ollama"), default="auto", help="upstream API"
    )
    parser.add_argument(
        "--upstream-model", metavar="NAME", help="model name to ask the upstream for"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for answers, ids and faults")
    parser.add_argument(
        "--tokens-per-second", type=_positive_number, metavar="N", help="override node speed"
    )
    parser.add_argument(
        "--time-to-first-token",
        type=_non_negative_number,
        metavar="S",
        help="override node start delay",
    )
    parser.add_argument(
        "--answer-tokens", type=positive_int, metavar="N", help="fixed answer length"
    )
    parser.add_argument("--rate-limit-per-minute", type=positive_int, default=60, metavar="N")
    parser.add_argument("--rate-limit-per-hour", type=positive_int, default=1000, metavar="N")
    parser.add_argument(
        "--node-drop-probability",
        type=_probability,
        default=0.0,
        metavar="P",
        help="chance that a node drops mid-answer (chaos testing)",
    )
    parser.add_argument(
        "--hosted",
        action="store_true",
        help=(
            "behave like the hosted service today: /api/v1 answers 404, 20 anonymous requests an "
            "hour, a dropped node leaves the chat stream pinging (no re-queue)"
        ),
    )
    parser.add_argument(
        "--resale-key",
        action="append",
        dest="resale_keys",
        type=_resale_key,
        metavar="KEY=MODEL[,MODEL...]",
        help="a reservation key (ifr_res_...) for /v1 and the models it reserves (repeatable)",
    )
    parser.add_argument(
        "--anonymous-limit",
        type=lambda text: whole_number(text, low=0),
        metavar="N",
        help=(
            "requests an hour per client IP on POST /v1/chat/completions and POST /api/chat "
            "(0 = unlimited; default unlimited, 20 with --hosted)"
        ),
    )


def _write(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


async def _serve(args: argparse.Namespace) -> int:
    import os

    from ..devserver import DevServer

    anonymous: dict[str, Any] = {}
    if args.anonymous_limit is not None:
        anonymous["anonymous_rate_limit_per_hour"] = args.anonymous_limit or None
    server = DevServer(
        host=args.host,
        port=args.port,
        tokens=args.tokens or ("dev-token",),
        dialect=args.dialect,
        heartbeat_interval=args.heartbeat or None,
        job_timeout=args.job_timeout,
        upstream=args.upstream,
        upstream_kind=args.upstream_kind,
        upstream_api_key=os.environ.get("INFERNET_UPSTREAM_API_KEY"),
        upstream_model=args.upstream_model,
        seed=args.seed,
        tokens_per_second=args.tokens_per_second,
        time_to_first_token=args.time_to_first_token,
        answer_tokens=args.answer_tokens,
        rate_limit_per_minute=args.rate_limit_per_minute,
        rate_limit_per_hour=args.rate_limit_per_hour,
        node_drop_probability=args.node_drop_probability,
        hosted=args.hosted,
        resale_keys=dict(args.resale_keys or ()),
        **anonymous,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    async with server:
        engine = (
            f"relaying to {args.upstream}"
            if args.upstream
            else "local emulation: answers are generated text, not a model"
        )
        models = sorted({m for node in server.nodes if node["online"] for m in node["models"]})
        limit = server.anonymous_rate_limit_per_hour
        anonymous_limit = "unlimited" if limit is None else f"{limit}/hour per IP"
        jobs_note = (
            "answers 404, as the hosted service does today"
            if server.hosted
            else f"bearer token, stream dialect {server.dialect}"
        )
        _write(f"Infernet local control plane ({engine})")
        _write(f"  Jobs API:          {server.base_url}  ({jobs_note})")
        _write(f"  OpenAI-compatible: {server.openai_base_url}  (no key; {anonymous_limit})")
        _write(f"  Playground chat:   {server.chat_url}  (no token; {anonymous_limit})")
        _write(f"  Token:  {server.token}")
        _write(f"  Models: {', '.join(models)}")
        if args.resale_keys:
            _write(f"  Resale keys: {len(args.resale_keys)} (Authorization: Bearer ifr_res_...)")
        if server.hosted:
            _write("  Mode: hosted (as the hosted service behaves today)")
        _write(f"export INFERNET_BASE_URL={server.base_url}")
        _write(f"export INFERNET_BEARER_TOKEN={server.token}")
        _write("Press Ctrl-C to stop.")
        await stop.wait()
    return EXIT_OK


def _handle(args: argparse.Namespace) -> int:
    try:
        # The command owns its loop (asyncio.Runner); the library itself never starts one.
        with asyncio.Runner() as runner:
            return runner.run(_serve(args))
    except KeyboardInterrupt:
        return EXIT_OK
    except OSError as exc:
        sys.stderr.write(f"{_PROG}: cannot listen on {args.host}:{args.port}: {exc}\n")
        return EXIT_ERROR
    except (ValueError, OverflowError) as exc:
        # The argument types catch what they can; what the DevServer still refuses (or a bind
        # refuses as out of range) is a bad setting all the same, not a crash.
        sys.stderr.write(f"{_PROG}: error: {' '.join(str(exc).split())}\n")
        return EXIT_USAGE
