"""Keep tokens, keys and passwords out of every log line, access log and traceback.

Three layers, each cheap enough to run on every record:

- :func:`redact_path`: the path segment after ``/applications/`` (the token in tenant routes) becomes
  :func:`token_ref` — ``tok:`` and 8 hex characters of its SHA-256 — so an access log still tells one tenant's
  requests from another's (and matches :func:`token_ref` of a token an operator holds) without carrying a usable token;
  a search's text (``?query=``) becomes ``…``.
- :func:`redact`: any other token-shaped word (32 characters of the URL-safe alphabet, as
  :func:`chat_common.tenancy.applications.new_token` draws them, with both cases, not hexadecimal) is replaced the same
  way. That catches tokens in exception text (a driver's ``Duplicate entry '…'``), in a kopf message, or in a path a log
  line quotes. Hexadecimal words (request ids, digests) and snake_case identifiers are left alone.
- The process's own secrets — the admin key and the password of every ``*_URL`` in the environment, and any
  ``*_PASSWORD``/``*_KEY``/``*_SECRET`` value — are replaced by ``***`` wherever they appear.

:class:`RedactingFilter` applies all three to a record's message, its arguments and its formatted traceback; it is
installed on every handler of every process (:func:`chat_common.logs.configure`, the API's gunicorn worker, the
operator). SQL parameters are kept out of exception text at the source instead (``hide_parameters=True`` on every
engine, :mod:`chat_common.clients.db`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

# The token in a tenant path: whatever the segment is (a wrong-shaped one is redacted too; it costs nothing), but
# not a route template's ``{token}``.
_TOKEN_SEGMENT = re.compile(r"(/applications/)([^/?#\s\"'{}]+)")
# A word of exactly 32 URL-safe characters (a token is 24 random bytes in URL-safe base64).
# A search's text in a query string: a client's words (and a statement parameter), not the log's business.
_SEARCH_TEXT = re.compile(r"([?&]query=)[^&#\s\"']*")
_TOKEN_WORD = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{32}(?![A-Za-z0-9_-])")
_HEX = re.compile(r"[0-9a-fA-F]{32}")
# Environment variables whose values are secrets, or URLs that may carry a password.
_SECRET_NAMES = re.compile(r".*(_PASSWORD|_KEY|_SECRET|_SEED)$")
_URL_NAMES = re.compile(r".*_URLS?$")
MIN_SECRET_CHARS = 6  # shorter values ("guest") would blank ordinary words; they are no secret anyway


def token_ref(token: str) -> str:
    """A stand-in for a token in logs: ``tok:`` + the first 8 hex characters of its SHA-256 (not reversible)."""
    return "tok:" + hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def _word(match: re.Match) -> str:
    word = match.group(0)
    # A token has both cases with near certainty (a 32-character token lacking one: ~1e-7); a hexadecimal request
    # id or digest, a snake_case or an upper-case identifier has not, and stays readable.
    if _HEX.fullmatch(word) or word.lower() == word or word.upper() == word:
        return word
    return token_ref(word)


def redact_path(path: str) -> str:
    """A request path with its token segment replaced by :func:`token_ref` and a search's text by ``…``."""
    path = _TOKEN_SEGMENT.sub(lambda m: m.group(1) + token_ref(m.group(2)), path)
    return _SEARCH_TEXT.sub(r"\1…", path) if "query=" in path else path


def environment_secrets(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The secret values this process was given: keys, passwords, and the passwords inside URLs."""
    env = os.environ if environ is None else environ
    found: set[str] = set()
    for name, value in env.items():
        if not value:
            continue
        if _SECRET_NAMES.fullmatch(name):
            found.add(value)
        elif _URL_NAMES.fullmatch(name):
            for url in value.split(","):
                try:
                    password = urlsplit(url.strip()).password
                except ValueError:
                    continue
                if password:
                    found.add(password)
    # Longest first, so that a secret containing another is replaced whole.
    return tuple(sorted((s for s in found if len(s) >= MIN_SECRET_CHARS), key=len, reverse=True))


class Redactor:
    """Applies the three layers to text; built once per process with that process's secrets."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = tuple(secrets)

    def __call__(self, text: str) -> str:  # noqa: D102
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return _TOKEN_WORD.sub(_word, redact_path(text))


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without tokens (see the module) and without ``secrets``."""
    return Redactor(secrets)(text)


class RedactingFilter(logging.Filter):
    """A handler filter that redacts a record's message, arguments and traceback before any formatter sees them."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor or Redactor(environment_secrets())

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102
        if getattr(record, "_redacted", False):  # one record may pass several handlers
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: let the handler report it as it would
            return True
        record.msg, record.args = self.redactor(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor(record.exc_text)
            # Formatters that format exc_info themselves (JSON ones) would bring the raw text back.
            record.exc_info = None
        if record.stack_info:
            record.stack_info = self.redactor(record.stack_info)
        record._redacted = True
        return True


def install(handlers: Iterable[logging.Handler], redacting: RedactingFilter | None = None) -> RedactingFilter:
    """Add one :class:`RedactingFilter` to each handler (once); returns the filter."""
    redacting = redacting or RedactingFilter()
    for handler in handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(redacting)
    return redacting
