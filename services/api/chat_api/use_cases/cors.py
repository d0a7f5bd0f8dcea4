"""Which web origins may read the live stream and ticket routes from a browser (CORS), as a rule with no I/O.

Only the stream routes and the ticket route opt in (``chat_api.resources.tickets``); every other route sends no CORS
header, so a browser refuses its answers to any page of another origin. The allowed origins are the tenant's own
list (Application CR ``spec.corsOrigins`` / admin REST), else the deployment's ``CORS_ALLOWED_ORIGINS``. The answer
names the one origin that asked (with ``Vary: Origin``), never a list; ``*`` in a list allows every origin and is
answered as ``*`` — and no ``Access-Control-Allow-Credentials`` is ever sent: tickets travel in the URL, not in
cookies, so a browser never needs to send credentials.
"""

from __future__ import annotations

from chat_common.validation import clean_origins

PREFLIGHT_MAX_AGE = 600


def parse_origins(raw: str | None) -> tuple[str, ...]:
    """``CORS_ALLOWED_ORIGINS``: comma-separated origins (:func:`chat_common.validation.clean_origins`); blanks
    around them and empty items are forgiven in a setting."""
    return clean_origins([item.strip() for item in (raw or "").split(",") if item.strip()])


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
