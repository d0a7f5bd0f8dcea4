"""Which web origins may read the live stream and ticket routes from a browser (CORS), as a rule with no I/O.

Only the stream routes and the ticket route opt in (``chat_api.resources.tickets``); every other route sends no CORS
header, so a browser refuses its answers to any page of another origin. The allowed origins are the tenant's own
list (Application CR ``spec.corsOrigins`` / admin REST), else the deployment's ``CORS_ALLOWED_ORIGINS``. The answer
names the one origin that asked (with ``Vary: Origin``), never a list; ``*`` in a list allows every origin and is
answered as ``*`` — and no ``Access-Control-Allow-Credentials`` is ever sent: tickets travel in the URL, not in
cookies, so a browser never needs to send credentials.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# scheme://host[:port], as a browser sends Origin (no path, no trailing slash); or "*".
_ORIGIN = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+")
MAX_ORIGINS = 50
MAX_ORIGIN_CHARS = 255
PREFLIGHT_MAX_AGE = 600


def parse_origins(raw: str | Iterable[str] | None) -> tuple[str, ...]:
    """A comma-separated (or listed) allow-list of origins, checked; :class:`ValueError` for a malformed one."""
    if raw is None:
        return ()
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    origins = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError("an origin must be a string")
        origin = item.strip()
        if not origin:
            continue
        if origin != "*" and (len(origin) > MAX_ORIGIN_CHARS or not _ORIGIN.fullmatch(origin)):
            raise ValueError(f"{origin[:80]!r} is not an origin (scheme://host[:port], or *)")
        origins.append(origin.lower() if origin != "*" else origin)
    if len(origins) > MAX_ORIGINS:
        raise ValueError(f"at most {MAX_ORIGINS} origins")
    return tuple(dict.fromkeys(origins))


def allowed_origin(origin: str | None, allowed: tuple[str, ...]) -> str | None:
    """What ``Access-Control-Allow-Origin`` answers to a request from ``origin``: that origin when listed, ``*``
    when the list allows any, else None (no header: the browser refuses the answer to the page)."""
    if not origin or not allowed:
        return None
    if origin.lower() in allowed:
        return origin
    return "*" if "*" in allowed else None


def cors_headers(origin: str | None, allowed: tuple[str, ...], *, preflight: bool = False) -> dict[str, str]:
    """The CORS headers of an answer (``Vary: Origin`` always: the answer depends on who asks)."""
    headers = {"Vary": "Origin"}
    answer = allowed_origin(origin, allowed)
    if answer is None:
        return headers
    headers["Access-Control-Allow-Origin"] = answer
    if preflight:
        headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, Last-Event-ID"
        headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE)
    else:
        headers["Access-Control-Expose-Headers"] = "Last-Event-ID"
    return headers
