"""Idempotency keys of chat and message creates: claimed and recorded in Redis, recovered from MySQL.

A create with ``Idempotency-Key`` first *claims* the key (one script call that also reads the numbering epoch):
the claim expires after ``claim_seconds`` — a bound on how long a request can take (the publish timeout plus a
margin) — so a request whose process died frees its key within seconds. It then *records* the number it was
given for ``KEY_LIFETIME_SECONDS``. A retry with the same key finds the record and re-publishes the same number
and text; the writers' upsert makes that a no-op if the first publish did land.

Redis may lose its data, and the keys with it. The writers store every key beside its row
(:mod:`chat_common.wire.idempotency`), and numbering re-opens after a loss only once every earlier create reached
MySQL; so while the epoch says a loss happened less than a key lifetime ago, a key Redis does not know is looked
up in MySQL (:class:`StoredKeys`) before a new number is given.
"""

from __future__ import annotations

import math

import redis.asyncio as redis
from sqlalchemy import bindparam, func, select, text

from chat_api.adapters.database import Database
from chat_api.adapters.pipelining import PipelinedScript
from chat_api.model import Claim, KeyInUse, Recorded
from chat_common.schema.tables import idempotency_keys
from chat_common.wire.idempotency import KEY_LIFETIME_SECONDS
from chat_common.wire.keys import RedisKeys

PENDING = "pending"

# KEYS: idempotency key, the numbering epoch of the application's slot (one hash slot)   ARGV: claim milliseconds
# Returns {claimed (1/0), recorded value or '', epoch or '', milliseconds the pending claim still holds}.
_CLAIM = """
local epoch = redis.call('GET', KEYS[2]) or ''
if redis.call('SET', KEYS[1], 'pending', 'NX', 'PX', ARGV[1]) then return {1, '', epoch, 0} end
return {0, redis.call('GET', KEYS[1]), epoch, redis.call('PTTL', KEYS[1])}
"""
# KEYS: idempotency key   ARGV: value, lifetime seconds
_RECORD = "return redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])"


class IdempotencyStore:
    """Claims, records and releases idempotency keys of one Redis namespace."""

    def __init__(
        self,
        client: redis.Redis,
        keys: RedisKeys,
        claim_seconds: float,
        *,
        replicas: int = 0,
        replica_timeout_ms: int = 500,
    ) -> None:
        self.client = client
        self.keys = keys
        self.claim_ms = int(claim_seconds * 1000)
        self._claim = client.register_script(_CLAIM)
        # A record is made durable on replicas like a number (WAIT; see chat_api.adapters.pipelining): a failover
        # keeps the epoch, so a record lost with the old master would not be looked up in MySQL, and a retry
        # would get a second number.
        self._record = PipelinedScript(client, _RECORD, replicas=replicas, replica_timeout_ms=replica_timeout_ms)

    async def claim(self, application_id: int, scope: str, key: str) -> Claim:
        """Claim the key for this request, or return what an earlier request recorded; :class:`KeyInUse` if busy.

        Keys are per application (all its tokens), so a retry with a rotated token replays.
        """
        names = [self.keys.idempotency(application_id, scope, key), self.keys.epoch_of(application_id)]
        claimed, value, epoch, pending_ms = await self._claim(keys=names, args=[self.claim_ms])
        epoch = epoch.decode() if isinstance(epoch, bytes) else epoch
        if claimed:
            return Claim(None, epoch)
        value = value.decode() if isinstance(value, bytes) else value
        if value == PENDING:
            raise KeyInUse(key, retry_after=max(1, math.ceil(int(pending_ms) / 1000)))
        application_id, number, digest = value.split(":", 2)
        return Claim(Recorded(int(application_id), int(number), digest), epoch)

    async def record(self, application_id: int, scope: str, key: str, outcome: Recorded) -> None:
        """Remember what the claimed key was given."""
        value = f"{outcome.application_id}:{outcome.number}:{outcome.fingerprint}"
        await self._record([self.keys.idempotency(application_id, scope, key)], [value, KEY_LIFETIME_SECONDS])

    async def release(self, application_id: int, scope: str, key: str) -> None:
        """Give a claimed key back (the request failed before a number was given)."""
        await self.client.delete(self.keys.idempotency(application_id, scope, key))


_FIND_STORED = select(
    idempotency_keys.c.application_id, idempotency_keys.c.number, idempotency_keys.c.fingerprint
).where(
    idempotency_keys.c.application_id == bindparam("app"),
    idempotency_keys.c.chat_number == bindparam("chat"),
    idempotency_keys.c.idempotency_key == bindparam("key"),
    idempotency_keys.c.created_at > func.now(6) - text(f"INTERVAL {KEY_LIFETIME_SECONDS} SECOND"),
)


class StoredKeys:
    """The keys the writers stored beside the rows, read when Redis may have forgotten them."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def find(self, application_id: int, chat_number: int, key: str) -> Recorded | None:
        """What a create with this key (in this chat, or 0 for chats) was given, if it was written."""
        rows = await self.db.rows(_FIND_STORED, {"app": application_id, "chat": chat_number, "key": key})
        return Recorded(int(rows[0][0]), int(rows[0][1]), rows[0][2]) if rows else None
