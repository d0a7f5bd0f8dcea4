"""Idempotent creates: a repeated ``Idempotency-Key`` is answered the number its first request was given.

Keys are per application, so a retry with the new token of a create made with the old one replays. A key Redis
does not know is looked up in MySQL while Redis may have forgotten it (:func:`chat_api.numbering.epochs.
keys_may_be_forgotten`; see :mod:`chat_api.adapters.idempotency`), so a retry across a Redis loss still answers the
first number. Re-publishing is safe: the writers' upsert ignores a create it already has.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from chat_api.model import Conflict, Keyed, KeyInUse, Numbered, Recorded, Unavailable
from chat_api.numbering.epochs import keys_may_be_forgotten
from chat_api.ports import IdempotencyPort, StoredKeysPort
from chat_common.wire.idempotency import check_idempotency_key, fingerprint


async def number_once(
    application_id: int,
    chat_number: int,
    text: str,
    key: str,
    allocate: Callable[[], Awaitable[Numbered]],
    *,
    idempotency: IdempotencyPort,
    stored_keys: StoredKeysPort,
) -> Numbered:
    """The number for a create with an idempotency key: the earlier request's (``replayed``) or a new one.

    The caller publishes it (again, for a replay: if the first publish failed, this one lands it).
    """
    check_idempotency_key(key)
    scope = f"chats/{chat_number}/messages" if chat_number else "chats"
    keyed = Keyed(key, fingerprint(text))
    stamp = time.time()  # a replay re-publishes a number this claim finds: stamped before it was read
    try:
        claim = await idempotency.claim(application_id, scope, key)
    except KeyInUse as busy:
        raise Conflict(
            f"a request with this Idempotency-Key is still in progress; retry in {busy.retry_after} s",
            retry_after=busy.retry_after,
        ) from None
    except RedisError:
        raise Unavailable("numbering store unavailable") from None
    try:
        earlier = claim.earlier
        if earlier is None and keys_may_be_forgotten(claim.epoch, time.time()):
            earlier = await stored_keys.find(application_id, chat_number, key)
            if earlier is not None:  # back into Redis, so that further retries stay off MySQL
                await idempotency.record(application_id, scope, key, earlier)
        if earlier is None:
            numbered = await allocate()
            stamp = numbered.published_at
            earlier = Recorded(numbered.application_id, numbered.number, keyed.fingerprint)
            await idempotency.record(application_id, scope, key, earlier)
            replayed = False
        else:
            replayed = True
    except BaseException as exc:
        # No number was given: free the key. If Redis is down the claim lapses by itself, and the error
        # reported stays the one that stopped the create, never the cleanup's.
        if claim.earlier is None:
            with contextlib.suppress(RedisError):
                await idempotency.release(application_id, scope, key)
        if isinstance(exc, RedisError):
            raise Unavailable("numbering store unavailable") from None
        raise
    if earlier.fingerprint != keyed.fingerprint:
        raise Conflict("this Idempotency-Key was used for a different request")
    return Numbered(earlier.application_id, earlier.number, stamp, replayed, keyed)
