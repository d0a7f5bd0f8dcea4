"""The publish stamp every queue message carries, as AMQP headers hold it (defined once, for the API and writers)."""

from __future__ import annotations

# Unix time (integer milliseconds: AMQP tables carry no floats) the API stamped on a create or edit just before its
# number or version was handed out; kept on every retry and dead-letter hop, so numbering recovery can tell messages
# from before a Redis loss from later ones.
PUBLISHED_AT_HEADER = "x-published-at-ms"


def stamp_header(at: float) -> int:
    """The header value for the unix time ``at``."""
    return round(at * 1000)


def read_stamp(value: object) -> float:
    """The unix time a header value says; 0.0 (older than anything) when absent or malformed."""
    return value / 1000 if isinstance(value, int) and not isinstance(value, bool) else 0.0
