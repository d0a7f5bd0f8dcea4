"""Live message streams (Server-Sent Events): ``GET /applications/{token}/chats/{n}/messages/stream``.

- :mod:`.hub` — the streams of one worker: order, exactly once, the gap rule, resume, backpressure, heartbeats.
- :mod:`.subscriber` — the worker's one consumer of the writers' announcements (``chat_common.wire.announcements``).
- :mod:`.reader` — the MySQL range reads a stream makes (replay, gaps, re-sync).
- :mod:`.registry` — the chats this worker streams, listed in Redis for the writers (who announce only those).
- :mod:`.asgi` — the Falcon app subclass that lets a stream abort its connection (slow clients) and carries the
  process's hub to the server (which ends the streams first when it shuts down), and the hub's lifespan.

The HTTP side is ``chat_api.resources.streams``; the design is in docs/architecture.md ("Live streams").
"""

from __future__ import annotations

from chat_api.streams.hub import Refused, StreamHub, StreamLimits, TokenStanding
from chat_api.streams.reader import SqlStreamReader
from chat_api.streams.registry import RedisStreamRegistry
from chat_api.streams.subscriber import AnnouncementSubscriber
from chat_common.clients.broker import API, BrokerNodes
from chat_common.wire.topology import announcements_exchange

__all__ = ["Refused", "StreamHub", "StreamLimits", "build_hub"]


def build_hub(settings, db, redis_client, keys, standing: TokenStanding | None = None) -> StreamHub:
    """The hub of one API process, over its MySQL pool and Redis client; its broker connection opens with the first
    stream. ``standing`` re-checks the tenant rules of open streams' tokens (``ChatService.token_standing``)."""

    def make_subscriber(hub: StreamHub) -> AnnouncementSubscriber:
        return AnnouncementSubscriber(
            BrokerNodes.from_settings(settings, API),
            announcements_exchange(settings.queue_prefix),
            on_announcement=hub.announce,
            on_ready=hub.on_subscriber_ready,
            on_lost=hub.on_subscriber_lost,
        )

    return StreamHub(
        SqlStreamReader(db),
        make_subscriber,
        StreamLimits.from_settings(settings),
        registry=RedisStreamRegistry(redis_client, keys.stream_rooms),
        standing=standing,
    )
