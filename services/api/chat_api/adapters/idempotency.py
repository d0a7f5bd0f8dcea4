"""Idempotency keys for chat and message creates, in Redis.

A create that carries ``Idempotency-Key`` first *claims* the key (short TTL, so a crashed request frees it), then
*records* the number it was given (24 h). A retry with the same key finds the record and re-publishes the same
number and text — the writers' upsert makes that a no-op if the first publish did land — so a client retrying
after a timeout or a 503 can never create a second message. Redis losing its data forgets the keys (documented).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import redis

from chat_common.keys import RedisKeys

CLAIM_SECONDS = 30
RECORD_SECONDS = 24 * 3600
PENDING = "pending"


@dataclass(frozen=True, slots=True)
class Recorded:
    """The outcome of the first request with a key."""

    application_id: int
    number: int
    fingerprint: str


class KeyInUse(Exception):
    """Another request with the same key is still being answered."""


def fingerprint(text: str) -> str:
    """Short digest of the request's text, to refuse a key reused for different content."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class IdempotencyStore:
    """Claims, records and looks up idempotency keys of one Redis namespace."""

    def __init__(self, client: redis.Redis, keys: RedisKeys) -> None:
        self.client = client
        self.keys = keys

    def claim(self, token: str, scope: str, key: str) -> Recorded | None:
        """Claim the key for this request (returns None), or return what an earlier request recorded."""
        name = self.keys.idempotency(token, scope, key)
        if self.client.set(name, PENDING, nx=True, ex=CLAIM_SECONDS):
            return None
        raw = self.client.get(name)
        value = raw.decode() if isinstance(raw, bytes) else raw
        if value is None:  # expired between the two calls: try once more
            return self.claim(token, scope, key)
        if value == PENDING:
            raise KeyInUse(key)
        application_id, number, digest = value.split(":", 2)
        return Recorded(int(application_id), int(number), digest)

    def record(self, token: str, scope: str, key: str, outcome: Recorded) -> None:
        """Remember what the claimed key was given."""
        value = f"{outcome.application_id}:{outcome.number}:{outcome.fingerprint}"
        self.client.set(self.keys.idempotency(token, scope, key), value, ex=RECORD_SECONDS)

    def release(self, token: str, scope: str, key: str) -> None:
        """Give a claimed key back (the request failed before a number was given)."""
        self.client.delete(self.keys.idempotency(token, scope, key))
