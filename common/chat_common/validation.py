"""Rules for the text clients send (names, bodies), shared by the API and the operator."""

from __future__ import annotations

import re

# The one home of every number that shapes a field; settings, columns, contracts and the API's limits refer here.
NAME_MAX_CHARS = 255  # also the width of the name columns: a configured limit may be lower, never higher
BODY_MAX_CHARS = 10_000
QUERY_MAX_CHARS = 200
MAX_NUMBER = 2**32 - 1  # chat and message numbers are unsigned 32-bit columns

NAME_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f]")
# Bodies may carry tabs and line breaks; other control characters are refused.
BODY_FORBIDDEN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Invisible characters that make text show other than it reads (spoofed names, hidden or reordered words): the
# bidirectional embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069) and the zero-width space, word
# joiner and byte-order mark (U+200B, U+2060, U+FEFF). Refused (422), not stripped: silently changing what a client
# stored would make its idempotent retry or its own copy differ from ours. The zero-width non-joiner and joiner
# (U+200C, U+200D) stay allowed: emoji sequences (a family, a flag with a sign) and Persian and Indic scripts need
# them, and they cannot reorder text. Implicit marks (U+200E/U+200F) stay allowed: right-to-left text needs them.
INVISIBLE = re.compile(r"[\u202a-\u202e\u2066-\u2069\u200b\u2060\ufeff]")


class Invalid(ValueError):
    """Input that breaks a rule of the product (blank name, body too long, …)."""


def clean_text(value: object, field: str, max_chars: int, forbidden: re.Pattern = NAME_FORBIDDEN) -> str:
    """Validate a text field; the text is kept exactly as given (no trimming, no normalisation)."""
    if value is None:
        raise Invalid(f"{field} is required")
    if not isinstance(value, str):
        raise Invalid(f"{field} must be a string")
    if not value.strip():
        raise Invalid(f"{field} must not be blank")
    if len(value) > max_chars:
        raise Invalid(f"{field} must be at most {max_chars} characters")
    if forbidden.search(value):
        raise Invalid(f"{field} must not contain control characters")
    if INVISIBLE.search(value):
        raise Invalid(f"{field} must not contain bidirectional-override or zero-width characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Invalid(f"{field} must be valid Unicode text") from None
    return value


def clean_name(value: object, max_chars: int = NAME_MAX_CHARS) -> str:
    """A valid application or chat name."""
    return clean_text(value, "name", max_chars)


def clean_body(value: object, max_chars: int = BODY_MAX_CHARS) -> str:
    """A valid message body."""
    return clean_text(value, "body", max_chars, BODY_FORBIDDEN)


# Web origins allowed by CORS on the stream and ticket routes (a tenant's list, or the deployment's): scheme://host[:port]
# as a browser sends Origin (no path, no trailing slash), or "*" (any origin; never with credentials).
# (IPv6 literals are not taken: a page served from one is a test setup, and "*" covers it.)
_ORIGIN = re.compile(r"https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?")
MAX_ORIGINS = 50
MAX_ORIGIN_CHARS = 255


def clean_origins(value: object) -> tuple[str, ...]:
    """An allow-list of origins from a list or a comma-separated string (``""``: none), lower-cased, without
    repeats; :class:`Invalid` for anything that is not exactly one (no blanks around them, at most
    :data:`MAX_ORIGINS`), as the OpenAPI document and the CRD state it."""
    if value is None or value == "":
        return ()
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise Invalid("origins must be a list of origins (scheme://host[:port], or *)")
    origins = []
    for origin in items:
        if not isinstance(origin, str):
            raise Invalid("each origin must be a string")
        if origin != "*" and (len(origin) > MAX_ORIGIN_CHARS or not _ORIGIN.fullmatch(origin)):
            raise Invalid(f"{origin[:80]!r} is not an origin (scheme://host[:port], or *)")
        origins.append(origin.lower())
    if len(origins) > MAX_ORIGINS:
        raise Invalid(f"at most {MAX_ORIGINS} origins")
    return tuple(dict.fromkeys(origins))
