"""Idempotency keys of chat and message creates: what they mean, how long they live, where they are kept.

A create sent with ``Idempotency-Key`` is answered once; a retry with the same key (and the same text) answers
the same number and stores nothing new, for ``KEY_LIFETIME_SECONDS`` after the first request. The API keeps
the key in Redis (fast path, see ``chat_api.adapters.idempotency``); the writers also store it beside the row,
in ``idempotency_keys``, in the row's own transaction — so the answer survives Redis losing its data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from sqlalchemy import Connection
from sqlalchemy.dialects.mysql import insert

from chat_common.tables import idempotency_keys
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


def store_keys(conn: Connection, rows: Iterable[dict]) -> None:
    """Store the keys of written creates (dicts with application_id, chat_number, idempotency_key, number,
    fingerprint) in the caller's transaction."""
    rows = list(rows)
    if rows:
        conn.execute(_RECORD, rows)
