"""One numbering call, made to succeed: counters loaded from MySQL, a recovery waited out, errors as answers."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError
from sqlalchemy.exc import InterfaceError, OperationalError

from chat_api.metrics_buffer import BUFFER
from chat_api.model import (
    Allocation,
    AllocationStatus,
    Application,
    Conflict,
    NotFound,
    Numbered,
    NumberingStillOpening,
    Unavailable,
    UnknownApplication,
)
from chat_api.ports import CounterSource, NumberingPort, RecoveryPort
from chat_common import metrics

ROUNDS = 5  # loads and recoveries in a row before the request gives up ("numbering is busy")


async def allocate(
    call: Callable[[], Awaitable[Allocation]],
    application: Application,
    chat_number: int,
    *,
    store: NumberingPort,
    counters: CounterSource,
    recovery: RecoveryPort,
) -> Numbered:
    """Run a numbering call, loading counters from MySQL or waiting out a recovery as needed.

    The answer carries the time stamped just before the call that handed the number out.
    """
    # The token the pre-0004 counters are under (the caller's, known from tenant(); "" when none is known).
    legacy = application.previous_token or application.token or ""
    try:
        for _ in range(ROUNDS):
            stamp = time.time()  # the message publishing this number carries the time (numbering recovery)
            allocation = await call()
            status = allocation.status
            if status == AllocationStatus.OK:
                return Numbered(allocation.application_id, allocation.value, stamp)
            if status == AllocationStatus.NOT_FOUND:
                raise NotFound("chat not found") if chat_number else UnknownApplication()
            if status == AllocationStatus.LIMIT_REACHED:
                BUFFER.inc(metrics.TENANT_REFUSALS, "max_chats")
                # A state conflict, not an invalid body: the same request succeeds once the limit is raised.
                raise Conflict(f"this application has reached its limit of {application.limits.max_chats} chats")
            if status == AllocationStatus.RECOVERING:
                if not await recovery.attempt(application.id):
                    raise Unavailable("numbering is recovering after a cache restart", retry_after=1)
            elif status == AllocationStatus.APPLICATION_NOT_LOADED:
                last = await counters.last_chat_number(application.id)
                await store.load_application(application.id, allocation.epoch, last, legacy)
            elif status == AllocationStatus.CHAT_NOT_LOADED:
                last = await counters.last_message_number(application.id, chat_number)
                await store.load_chat(application.id, allocation.epoch, chat_number, last, legacy)
    except NumberingStillOpening:
        # Never numbered before: no cache restarted, the first opening of its numbering is taking long.
        raise Unavailable("numbering of this application is still opening for its first use") from None
    except (RedisError, TimeoutError):
        raise Unavailable("numbering store unavailable") from None
    except (OperationalError, InterfaceError):
        raise Unavailable("database unavailable") from None
    raise Unavailable("numbering is busy", retry_after=1)
