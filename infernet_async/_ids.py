"""Job ids: what may go into a URL path. Pure, so the surfaces can build their paths with it."""

from __future__ import annotations

import re
from urllib.parse import quote

__all__ = ["job_path", "quoted_job_id", "validate_job_id"]

# Job ids are opaque to us but go into URL paths: letters, digits and ``_-.:``, no leading dot,
# bounded length. Anything else ("../", "?", "#", "%2F", "/") is refused, so an id can never reach
# another path.
_JOB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}")


def validate_job_id(job_id: object) -> str:
    """Return ``job_id`` if it is a well-formed job id; raises ``ValueError`` otherwise."""
    if not isinstance(job_id, str) or _JOB_ID_RE.fullmatch(job_id) is None or ".." in job_id:
        raise ValueError(f"not a valid job id: {job_id!r}")
    return job_id


def quoted_job_id(job_id: str) -> str:
    """The id, validated, as it goes into a path segment."""
    return quote(validate_job_id(job_id), safe="")


def job_path(job_id: str, suffix: str = "") -> str:
    """The path of a job under the documented API's root (``/jobs/{id}``, plus ``suffix`` such
    as ``/stream``), id validated and quoted.
    """
    return f"/jobs/{quoted_job_id(job_id)}{suffix}"
