"""Where a lag-tolerant read (a page, a search) may run: the read replica, or the primary."""

from __future__ import annotations

import time

from redis.exceptions import RedisError

from chat_api.model import Application
from chat_api.ports import NumbersPort, Repository


async def from_replica(repository: Repository, numbers: NumbersPort, application: Application) -> bool:
    """Whether a lag-tolerant read of this tenant may be answered by the read replica.

    Only while a replica may serve at all, and only when the tenant's last edit is older than how far behind
    the replica may be (:meth:`Repository.replica_lag_bound`): a client that just renamed a chat or edited a
    message reads it back wherever the read runs. Creates do not count: their rows are written after the
    201 in any case. When the edit clock cannot be read, the primary answers. The edit clock is Redis's time and
    the comparison uses this host's: clocks kept by NTP (milliseconds apart) stay well inside the bound's
    one-second margin; a host whose clock runs ahead of Redis's by more would send an editor to the replica early.
    """
    bound = repository.replica_lag_bound()
    if bound is None:
        return False
    try:
        last_edit = await numbers.last_edit(application.id)
    except (RedisError, TimeoutError):
        return False
    return last_edit is None or time.time() - last_edit > bound
