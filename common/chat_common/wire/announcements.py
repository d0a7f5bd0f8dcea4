"""Announcements of committed message rows: what the writers tell the API's live streams, after the commit.

The message-writer commits a batch, then publishes one small, transient message per chat the batch touched (and that
some API worker streams: :func:`listened_chats`) on the topic exchange ``<QUEUE_PREFIX>.announcements``
(:func:`chat_common.wire.topology.declare_announcements`), routing key ``<application id>.<chat number>``. Each API
worker binds its own exclusive queue to the chats its open streams follow, so an announcement reaches only the
workers that have a listener for that chat.

An announcement carries every row the commit wrote in that chat, with its body, so that a stream needs no MySQL
read in the common case::

    {"t": <unix time of the commit>, "m": [[<message number>, <body>, <version>], ...]}

Version 0 is a create; a higher version is an edit (the writers apply edits by version: newest wins).

Announcements are best effort by design and never hold up the write path: they are published without confirms,
after the rows are committed and before the deliveries are acknowledged; one that cannot be published is kept for
the next batch (a bounded number of them), then dropped, logged and counted. A stream never depends on one: it
fills any gap in message numbers from MySQL, and a worker whose broker connection was lost re-reads its streams'
chats from MySQL (``chat_api.streams``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import orjson
import pika
import pika.exceptions

from chat_common import metrics
from chat_common.wire.topology import declare_announcements

log = logging.getLogger(__name__)

TRANSIENT = pika.BasicProperties(content_type="application/json", delivery_mode=pika.DeliveryMode.Transient)
MAX_UNSENT_CHATS = 10_000  # announcements kept for the next attempt while the broker is away, then dropped


def routing_key(application_id: int, chat_number: int) -> str:
    """The routing key of one chat's announcements (an API worker binds it while the chat has listeners)."""
    return f"{application_id}.{chat_number}"


@dataclass(frozen=True, slots=True)
class Committed:
    """One row the writer committed: a message create (version 0) or edit."""

    application_id: int
    chat_number: int
    message_number: int
    body: str
    version: int


def encode(rows: Iterable[Committed], committed_at: float) -> dict[str, bytes]:
    """One announcement body per chat: ``{routing key: body}``, the rows of each chat in number order."""
    by_chat: dict[str, list[list]] = {}
    for row in rows:
        by_chat.setdefault(routing_key(row.application_id, row.chat_number), []).append(
            [row.message_number, row.body, row.version]
        )
    stamp = round(committed_at, 3)
    return {key: orjson.dumps({"t": stamp, "m": sorted(items)}) for key, items in by_chat.items()}


def decode(body: bytes) -> tuple[float, list[tuple[int, str, int]]]:
    """``(commit time, [(number, body, version), ...])``; raises ``ValueError`` for anything malformed."""
    data = orjson.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("m"), list):
        raise ValueError("not an announcement")
    rows = []
    for item in data["m"]:
        number, text, version = item
        if not (isinstance(number, int) and isinstance(text, str) and isinstance(version, int)) or number < 1:
            raise ValueError("malformed announced row")
        rows.append((number, text, version))
    stamp = data.get("t")
    return (float(stamp) if isinstance(stamp, int | float) else 0.0), rows


def listened_chats(client, key: str) -> Callable[[list[str]], set[str] | None]:
    """Which routing keys are streamed now, from the hash the API workers keep (``RedisKeys.stream_rooms``).

    Read after the commit: a stream registered later replays that commit from MySQL, one registered earlier gets
    the announcement. When Redis cannot answer, None: announce everything (safe, only slower).
    """

    def listened(keys: list[str]) -> set[str] | None:
        try:
            lapses = client.zmscore(key, keys)
        except Exception as exc:  # any failure means "unknown", never a failed batch
            log.debug("stream registry unreadable (%s): announcing every chat", exc.__class__.__name__)
            return None
        now = time.time()
        return {k for k, lapse in zip(keys, lapses, strict=True) if lapse is not None and float(lapse) > now}

    return listened


class Announcer:
    """Publishes a writer's committed rows on the announcement exchange, over the writer's own broker connection.

    :meth:`attach` is called with a channel of each new consumer connection (the writer's loop reconnects after a
    broker failure; so does this); :meth:`committed` is called by the batch handler right after its commit;
    :meth:`flush` publishes (the ``AnnounceHook`` calls it once the batch is applied, before it is acknowledged).
    Nothing here ever raises into the write path.
    """

    def __init__(self, exchange: str, listened: Callable[[list[str]], set[str] | None] | None = None) -> None:
        self.exchange = exchange
        # Which of these chats (routing keys) some API worker streams now; None = unknown (announce them all). Most
        # chats have no listener: skipping them keeps the writer's cost per batch near zero (a publish is ~30 µs).
        self.listened = listened
        self._channel = None
        self._unsent: dict[str, list[bytes]] = {}
        self._rows: list[Committed] = []

    @property
    def pending(self) -> bool:
        """True while committed rows wait to be announced."""
        return bool(self._rows or self._unsent)

    def attach(self, channel) -> None:
        """Open this announcer's channel on the connection ``channel`` belongs to, and declare the exchange."""
        self._channel = None
        try:
            own = channel.connection.channel()
            declare_announcements(own, self.exchange)
            self._channel = own
        except (pika.exceptions.AMQPError, OSError) as exc:
            log.warning("announcement channel not opened (%s); streams will re-sync from MySQL", exc)

    def committed(self, rows: Iterable[Committed]) -> None:
        """Remember rows just committed (called by the handler after its transaction)."""
        self._rows.extend(rows)

    def flush(self) -> int:
        """Publish what was committed since the last flush (and anything left unsent); returns how many sent."""
        rows, self._rows = self._rows, []
        if rows:
            bodies = encode(rows, time.time())
            wanted = self.listened(list(bodies)) if self.listened is not None else None
            for key, body in bodies.items():
                if wanted is None or key in wanted:
                    self._unsent.setdefault(key, []).append(body)
        if not self._unsent:
            return 0
        sent = 0
        channel = self._channel
        try:
            if channel is None or not channel.is_open:
                raise pika.exceptions.ChannelWrongStateError("no announcement channel")
            while self._unsent:
                key, bodies = next(iter(self._unsent.items()))
                while bodies:
                    channel.basic_publish(self.exchange, key, bodies[0], TRANSIENT)
                    bodies.pop(0)
                    sent += 1
                del self._unsent[key]
        except Exception as exc:  # never break the write path: the rows are committed and will be acknowledged
            metrics.WRITER_ANNOUNCE_FAILURES.inc()
            log.warning("announcement not published (%s); kept for the next batch", exc.__class__.__name__)
            while len(self._unsent) > MAX_UNSENT_CHATS:
                self._unsent.pop(next(iter(self._unsent)))
                metrics.WRITER_ANNOUNCEMENTS_DROPPED.inc()
        if sent:
            metrics.WRITER_ANNOUNCED.inc(sent)
        return sent
