"""Which chats this worker streams, told to the writers through Redis (``RedisKeys.stream_rooms``, a sorted set).

The message-writer announces a committed row only when its chat is listed there and current (a publish costs it
~30 µs, and most chats have no listener). A worker lists a chat before its first stream there replays anything
(so a commit the writer did not announce is one the replay reads), refreshes its chats' entries every
``REFRESH_SECONDS`` and never removes one: another worker may stream the same chat, so entries simply lapse
(``TTL_SECONDS`` after the last refresh) and lapsed ones are trimmed now and then. Should Redis lose the set,
the next refresh (within ``REFRESH_SECONDS``) lists every streamed chat again; while Redis cannot be read at all,
the writers announce every chat.
"""

from __future__ import annotations

import time

import redis.asyncio as redis

TTL_SECONDS = 60.0
REFRESH_SECONDS = 10.0


class RedisStreamRegistry:
    """The registry over the API's Redis client."""

    def __init__(self, client: redis.Redis, key: str) -> None:
        self.client = client
        self.key = key

    async def register(self, rooms: list[str]) -> None:
        """List (or refresh) these chats for ``TTL_SECONDS`` and trim entries that lapsed a while ago."""
        now = time.time()
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.zadd(self.key, dict.fromkeys(rooms, now + TTL_SECONDS))
            pipe.zremrangebyscore(self.key, "-inf", now - TTL_SECONDS)
            await pipe.execute()
