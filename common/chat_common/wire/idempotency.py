"""Idempotency keys of chat and message creates: what they mean, how long they live, where they are kept.

A create sent with ``Idempotency-Key`` is answered once; a retry with the same key (and the same text) answers
the same number and stores nothing new, for ``KEY_LIFETIME_SECONDS`` after the first request. The API keeps
the key in Redis (fast path, see ``chat_api.adapters.idempotency``); the writers also store it beside the row,
in ``idempotency_keys``, in the row's own transaction — so the answer survives Redis losing its data.

Keys are scoped to their caller and bound to their request. A chat or message key lives under the application
(the token's tenant) and the route (chats, or one chat's messages), with a fingerprint of the create's text. An
application key (``POST /applications``, no tenant yet) is stored as :func:`caller_key` — a digest of the caller's
identity and the key, under the ``api:`` prefix — with a :func:`request_fingerprint`: one caller cannot reach
another's key, and none can reach the operator's (``k8s:<uid>``, written by the operator straight to MySQL, never
through the API). See docs/security.md.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping

from sqlalchemy import Connection
from sqlalchemy.dialects.mysql import insert

from chat_common.schema.tables import idempotency_keys
from chat_common.validation import Invalid

KEY_LIFETIME_SECONDS = 24 * 3600
MAX_KEY_CHARS = 128

# A redelivered create finds its key already there: keep the first (it is the same).
_RECORD = insert(idempotency_keys).prefix_with("IGNORE")


def valid_idempotency_key(key: str) -> bool:
    """Keys are stored in an ASCII column: printable ASCII without spaces, 1-128 characters."""
    return 0 < len(key) <= MAX_KEY_CHARS and all("!" <= ch <= "~" for ch in key)


def check_idempotency_key(key: str) -> str:
    """The key itself, or :class:`Invalid` (422) saying what a key must look like."""
    if not valid_idempotency_key(key):
        raise Invalid(f"Idempotency-Key must be 1-{MAX_KEY_CHARS} printable ASCII characters without spaces")
    return key


def fingerprint(text: str) -> str:
    """Short digest of a create's text, to refuse a key reused for different content."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class KeyReused(Exception):
    """The idempotency key was used before for a different request (409)."""


API_KEY_PREFIX = "api:"  # REST callers' application keys; the operator's are "k8s:<uid>", never reachable from here


def caller_key(caller: str, key: str) -> str:
    """How an application-create key is stored: bound to the caller's identity, opaque, in the ``api:`` space.

    ``caller`` is who authenticated (see ``chat_api.resources.params.admin_identity``). The digest makes the
    stored value independent of the key's text, so no key a client sends can name another caller's application
    or the operator's ``k8s:`` keys.
    """
    check_idempotency_key(key)
    return API_KEY_PREFIX + hashlib.sha256(f"{caller}\0{key}".encode()).hexdigest()


def request_fingerprint(method: str, route: str, body: Mapping[str, object]) -> str:
    """Digest of a request's meaning: method, route template and the body as parsed (sorted, compact JSON).

    The body is the one the service validated (``{"name": "..."}`` whatever form it was sent in), so the same
    request sent as JSON, nested JSON or a form has one fingerprint.
    """
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return fingerprint(f"{method.upper()} {route}\n{canonical}")


def store_keys(conn: Connection, rows: Iterable[dict]) -> None:
    """Store the keys of written creates (dicts with application_id, chat_number, idempotency_key, number,
    fingerprint) in the caller's transaction."""
    rows = list(rows)
    if rows:
        conn.execute(_RECORD, rows)
