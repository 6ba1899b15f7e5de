"""What was wrong with an answer of the wrong shape, told without quoting it.

Rules: pydantic's own message quotes the offending values, and a body of the wrong shape may be an
echo of the request, bearer token included. ``shape_problems`` names the fields and the JSON types
found instead, never a value; the body itself stays on the error's ``.body``.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

__all__ = ["shape_problems"]

# How much of a malformed answer an error message shows: enough to see what is wrong, short enough
# for a log line.
_EXCERPT_LIMIT = 200
_PROBLEMS_SHOWN = 3

_JSON_TYPE_NAMES: dict[type, str] = {
    type(None): "null",
    bool: "boolean",
    int: "number",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
}


def _field_path(loc: tuple[int | str, ...], data: Any, *, missing: bool) -> str:
    """The part of a pydantic error location that names a place in ``data``.

    Pydantic adds the member it tried to a union's location (``status.str``); following the
    location through the body drops those, so each field is named once.
    """
    parts: list[str] = []
    node = data
    for part in loc:
        found = (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        )
        if not found:
            if missing and isinstance(node, dict):
                parts.append(str(part))
            break
        node = node[part]
        parts.append(str(part))
    return ".".join(parts) or "body"


def shape_problems(exc: ValidationError, data: Any) -> str:
    """What was wrong with a body, as ``field: problem (got <JSON type>)``, values left out."""
    by_field: dict[str, str] = {}
    for error in exc.errors(include_url=False, include_context=False):
        missing = error["type"] == "missing"
        problem = error["msg"]
        if not missing:  # a missing field's input is its parent: no news there
            problem += f" (got {_JSON_TYPE_NAMES.get(type(error['input']), 'a value')})"
        # Of a union's members, the last one tried is the most general (``str`` for a status).
        by_field[_field_path(error["loc"], data, missing=missing)] = problem
    problems = [f"{field}: {problem}" for field, problem in by_field.items()]
    if len(problems) > _PROBLEMS_SHOWN:
        problems[_PROBLEMS_SHOWN:] = [f"{len(problems) - _PROBLEMS_SHOWN} more"]
    text = "; ".join(problems)
    if len(text) > _EXCERPT_LIMIT:
        text = text[: _EXCERPT_LIMIT - 1] + "…"
    return text
