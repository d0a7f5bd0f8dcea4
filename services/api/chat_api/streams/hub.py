"""The live streams of one API worker: who listens to which chat, in what order events go out, and when to read MySQL.

Terms. A **stream** is one open ``…/messages/stream`` response; a **room** is a chat with at least one local
stream (the worker's announcement queue is bound to it while the room exists, and a little longer). Everything here
runs on the worker's event loop, with no task and no timer per stream: a stream is a few fields, a list of frames
waiting to be written and, only while it waits, one future. One ticker task per worker sends heartbeats, re-reads
gaps and unbinds rooms nobody listens to any more.

**Order, exactly once.** A stream remembers the last message number it handed out (``last``). A message is handed
out only as ``last + 1`` — from an announcement, a replay page or a MySQL read alike — so numbers go out in order,
each once; anything at or below ``last`` is a duplicate and dropped. A higher number is held (``ahead``) while the
numbers before it are missing: rows commit out of order (batches, retry tiers, several writers), and a number can be
*burned* (numbered, then its publish failed, so it is never written).

**The gap rule.** A missing number is waited for while the rows stored after it are young: once a held row has been
stored for ``STREAM_GAP_SECONDS`` (10 s by default, above the writers' 1 s and 5 s retry tiers), every number below
it was given out at least that long ago and is treated as burned: the stream moves on past it. While holding, the
stream re-reads the range from MySQL (``STREAM_GAP_CHECK_SECONDS`` after the hole appeared, then every second), so a
row whose announcement was lost still arrives within about a second. Row ages come from the database (age of
``created_at``) or from when the announcement arrived, so a replay skips an old burned number at once. (A row
written after the stream skipped it — a create retried for longer than ``STREAM_GAP_SECONDS`` — is not shown live;
any read of the chat shows it.)

**Resume.** A stream starts after ``Last-Event-ID`` / ``?after=`` (or the newest stored message). It joins its room
first — the room is bound before anything is read — and then replays the stored messages after its position from
MySQL in pages; announcements arriving meanwhile are held as above, so the seam has no gap and no duplicate.

**Broker lost.** While the announcement connection is down nothing is announced to this worker; when it is back the
hub binds its rooms again and re-reads every room from MySQL after its streams' positions.

**Tenant rules.** A stream outlives the request that opened it, so the ticker re-checks the tenant rules of the
tokens of open streams every ``TENANT_CHECK_SECONDS`` (one check per distinct token per round, answered by the
process's tenant directory: cached, no MySQL query per stream — ``ChatService.token_standing``). A stream whose
application was suspended, or whose rotated-away token passed its grace period, gets a last ``event: error`` with
the same JSON a request gets (``{"error": "application suspended"}`` / ``"application not found"``) and ends
cleanly; its reconnect answers 403 / 404.

**Backpressure.** Frames wait in the stream's list while the client reads slowly (the server's send waits for the
socket). Past ``STREAM_BUFFER_BYTES`` of waiting frames (or held ones) the stream is cut: its connection is aborted
and the client reconnects with the last id it received, replaying the rest from MySQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import orjson

from chat_api.metrics_buffer import BUFFER
from chat_api.model import Unavailable
from chat_api.streams.reader import Row, StreamReader
from chat_api.streams.registry import REFRESH_SECONDS as REGISTRY_REFRESH_SECONDS
from chat_common import metrics
from chat_common.validation import MAX_NUMBER
from chat_common.wire import announcements

log = logging.getLogger(__name__)

TICK_SECONDS = 0.25
GAP_CHECK_SECONDS = 0.5  # first MySQL look at a hole (most are closed by the next announcement well before)
GAP_RECHECK_SECONDS = 1.0
ROOM_LINGER_SECONDS = 30.0  # keep a chat bound this long after its last listener left (reconnecting clients)
PAGE = 100
EDITS_PER_ROOM = 32
READ_CONCURRENCY = 4  # MySQL reads for streams at once per worker (the pool also serves requests)
BIND_WAIT_SECONDS = 2.0
REGISTER_WAIT_SECONDS = 1.0
HEARTBEAT = b": heartbeat\n\n"
# The tenant rules of open streams' tokens are re-checked this often (the directory's own staleness bound,
# TENANT_CACHE_SECONDS, comes on top: a suspension reaches a stream within both).
TENANT_CHECK_SECONDS = 1.0
# Ends of a stream that let its response finish cleanly (what is pending is written first); others abort it.
CLEAN_ENDS = frozenset({"shutdown", "suspended", "expired_token", "unknown"})


class Frame(bytes):
    """Pre-rendered SSE bytes, shared by every stream of a room; Falcon writes what ``serialize`` returns."""

    __slots__ = ()

    def serialize(self, handler: object = None) -> bytes:  # the one method Falcon calls on an event
        """The bytes to write."""
        return self


def message_frame(number: int, body: str) -> bytes:
    """``event: message`` with the same JSON as ``GET …/messages/{m}``; its ``id`` is the message number."""
    return b"id: %d\nevent: message\ndata: %s\n\n" % (number, orjson.dumps({"message_number": number, "body": body}))


def edit_frame(number: int, body: str, version: int) -> bytes:
    """``event: edit`` with the new body and its version; no ``id``, so the client's resume point stays."""
    data = orjson.dumps({"message_number": number, "body": body, "version": version})
    return b"event: edit\ndata: %s\n\n" % data


def error_frame(error: str) -> bytes:
    """``event: error`` with the JSON body a request with this token would get (the stream's last event)."""
    return b"event: error\ndata: %s\n\n" % orjson.dumps({"error": error})


# ``(reason, error)`` when a token may no longer be served, else None (``ChatService.token_standing``).
TokenStanding = Callable[[str], Awaitable[tuple[str, str] | None]]


class StreamRegistry(Protocol):
    """Tells the writers which chats this worker streams (adapter: ``RedisStreamRegistry``)."""

    async def register(self, rooms: list[str]) -> None:
        """List or refresh these chats (routing keys)."""
        ...


class Refused(Exception):
    """A limit refuses a new stream: ``limit`` is "tenant" (its share used up: 429) or "process" (full: 503)."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


@dataclass(frozen=True)
class StreamLimits:
    """The settings of the streams of one process (``STREAM_*``)."""

    max_per_process: int = 4_000
    max_per_tenant: int = 100
    heartbeat_seconds: float = 15.0
    retry_ms: int = 3_000
    buffer_bytes: int = 256 * 1024
    gap_seconds: float = 10.0

    @classmethod
    def from_settings(cls, settings) -> StreamLimits:
        """The limits of a running configuration."""
        return cls(
            settings.stream_max_per_process,
            settings.stream_max_per_tenant,
            settings.stream_heartbeat_seconds,
            settings.stream_retry_ms,
            settings.stream_buffer_bytes,
            settings.stream_gap_seconds,
        )


class Room:
    """A chat with local listeners."""

    __slots__ = ("application_id", "bound", "chat_number", "edits", "empty_since", "key", "registered", "streams")

    def __init__(self, application_id: int, chat_number: int) -> None:
        self.key = announcements.routing_key(application_id, chat_number)
        self.application_id = application_id
        self.chat_number = chat_number
        self.streams: set[Stream] = set()
        self.bound: asyncio.Future[None] | None = None  # Bind-Ok awaited or received on the current connection
        self.empty_since = 0.0
        self.edits: dict[int, tuple[int, str]] = {}  # recent edits: number -> (version, body)
        self.registered = False  # listed in the writers' registry (chat_api.streams.registry)


class Stream:
    """One open stream: its position, its frames waiting to be written, the rows it holds back."""

    __slots__ = ("abort", "ahead", "ahead_bytes", "ended", "gap_check_at", "last", "pending", "pending_bytes",
                 "reading", "reread", "room", "token", "waiter")  # fmt: skip

    def __init__(self, room: Room, last: int, abort: Callable[[], None], token: str | None = None) -> None:
        self.room = room
        self.token = token  # the token it was opened with: its tenant rules are re-checked while it is open
        self.last = last
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.ahead: dict[int, tuple[bytes, float]] | None = None  # number -> (frame, stored since, monotonic)
        self.ahead_bytes = 0
        self.waiter: asyncio.Future[None] | None = None
        self.ended: str | None = None  # why it ends: client, slow, shutdown, suspended, expired_token, unknown
        self.abort = abort
        self.gap_check_at = 0.0
        self.reading = False
        self.reread = False  # rows held during the replay were dropped: the replay reads once more at its end


class StreamHub:
    """All the streams of one worker (see the module docstring)."""

    def __init__(
        self,
        reader: StreamReader,
        make_subscriber: Callable[[StreamHub], object],
        limits: StreamLimits,
        clock: Callable[[], float] = time.monotonic,
        registry: StreamRegistry | None = None,
        standing: TokenStanding | None = None,
    ) -> None:
        self.reader = reader
        self.standing = standing
        self._next_standing = 0.0
        self._checking = False
        self.registry = registry
        self._next_refresh = 0.0
        self.limits = limits
        self.clock = clock
        self.rooms: dict[str, Room] = {}
        self.per_tenant: dict[int, int] = {}
        self.open_count = 0
        self.gapped: set[Stream] = set()
        self.closing = False
        self._make_subscriber = make_subscriber
        self.subscriber = None
        self._ticker: asyncio.Task[None] | None = None
        self._reads = asyncio.Semaphore(READ_CONCURRENCY)
        self._background: set[asyncio.Task] = set()
        self._next_heartbeat = 0.0
        self._beats: list[Stream] = []
        self._beats_per_tick = 1
        self.retry_frame = Frame(b"retry: %d\n\n" % limits.retry_ms)

    # -- opening and closing ---------------------------------------------------------------------------------
    def open(
        self, application_id: int, chat_number: int, after: int, abort: Callable[[], None], token: str | None = None
    ) -> Stream:
        """Register a stream positioned after message ``after`` (opened with ``token``, whose tenant rules the
        ticker re-checks); :class:`Refused` beyond a limit."""
        if self.closing:
            raise Refused("shutdown", "this API process is shutting down; reconnect")
        if self.open_count >= self.limits.max_per_process:
            raise Refused("process", f"at most {self.limits.max_per_process} streams per API process")
        if self.per_tenant.get(application_id, 0) >= self.limits.max_per_tenant:
            raise Refused("tenant", f"at most {self.limits.max_per_tenant} streams per application and API process")
        self._start()
        key = announcements.routing_key(application_id, chat_number)
        room = self.rooms.get(key)
        if room is None:
            room = self.rooms[key] = Room(application_id, chat_number)
        stream = Stream(room, after, abort, token)
        room.streams.add(stream)
        self.open_count += 1
        self.per_tenant[application_id] = self.per_tenant.get(application_id, 0) + 1
        metrics.STREAMS_OPEN.inc()
        return stream

    def _close(self, stream: Stream) -> None:
        room = stream.room
        if stream not in room.streams:
            return
        room.streams.discard(stream)
        if not room.streams:
            room.empty_since = self.clock()
        self.gapped.discard(stream)
        self.open_count -= 1
        count = self.per_tenant.get(room.application_id, 1) - 1
        if count:
            self.per_tenant[room.application_id] = count
        else:
            self.per_tenant.pop(room.application_id, None)
        metrics.STREAMS_OPEN.dec()
        BUFFER.inc(metrics.STREAM_CLOSED, stream.ended or "client")

    def end(self, stream: Stream, reason: str) -> None:
        """End a stream: ``slow`` aborts the connection (the client resumes), ``client`` follows a disconnect,
        ``shutdown`` and the tenant refusals (:data:`CLEAN_ENDS`) end the response cleanly after what is pending."""
        if stream.ended:
            return
        stream.ended = reason
        if reason not in CLEAN_ENDS:
            stream.pending.clear()
            stream.pending_bytes = 0
            stream.ahead = None
            with contextlib.suppress(Exception):
                stream.abort()
        self._wake(stream)

    def refuse(self, stream: Stream, reason: str, error: str) -> None:
        """End a stream whose token may no longer be served: a last ``event: error``, then a clean end."""
        if stream.ended:
            return
        stream.ahead = None  # held rows would wait for numbers this stream will not get any more
        stream.ahead_bytes = 0
        stream.pending.append(error_frame(error))
        stream.pending_bytes += len(stream.pending[-1])
        self.end(stream, reason)

    async def events(self, stream: Stream) -> AsyncIterator[Frame]:
        """The response body of a stream: retry hint, replay, then live frames until the stream ends."""
        try:
            yield self.retry_frame
            await self._subscribed(stream.room)
            try:
                async for frame in self._replay(stream):
                    yield frame
            except Unavailable as exc:  # MySQL away: end the response; the client resumes after `retry`
                log.warning("stream replay of %s failed: %s", stream.room.key, exc)
                return
            loop = asyncio.get_running_loop()
            while True:
                if stream.pending:
                    data = Frame(b"".join(stream.pending))
                    stream.pending.clear()
                    stream.pending_bytes = 0
                    yield data
                    continue
                if stream.ended:
                    return
                stream.waiter = loop.create_future()
                await stream.waiter
        finally:
            self._close(stream)

    async def _replay(self, stream: Stream) -> AsyncIterator[Frame]:
        """Stored messages after the stream's position, page by page (announcements meanwhile are held)."""
        room = stream.room
        cursor = reread_from = stream.last
        stream.reading = True  # no gap read of its own while it replays
        try:
            while not stream.ended:
                async with self._reads:
                    rows = await self.reader.range(room.application_id, room.chat_number, cursor, MAX_NUMBER, PAGE)
                BUFFER.inc(metrics.STREAM_READS, "replay")
                # Row by row, writing whenever half the buffer is full: the socket paces the replay, so a replay
                # never counts as a slow client however large the page.
                for start in range(len(rows)):
                    self._offer_rows(stream, rows[start : start + 1])
                    if stream.pending and (
                        stream.pending_bytes * 2 >= self.limits.buffer_bytes or start == len(rows) - 1
                    ):
                        data = Frame(b"".join(stream.pending))
                        stream.pending.clear()
                        stream.pending_bytes = 0
                        yield data
                if len(rows) < PAGE:
                    if not stream.reread:
                        return
                    # Announcements held meanwhile overflowed and were dropped: their rows were stored before
                    # they were announced, so one more read from the last delivered number finds them.
                    stream.reread = False
                    if stream.last == reread_from:  # no progress: a hole held that much back; cut as before
                        self.end(stream, "slow")
                        return
                    cursor = reread_from = stream.last
                    continue
                cursor = rows[-1][0]
        finally:
            stream.reading = False
            stream.gap_check_at = self.clock() + GAP_CHECK_SECONDS

    # -- ordering --------------------------------------------------------------------------------------------
    def _deliver(self, stream: Stream, number: int, frame: bytes) -> None:
        stream.last = number
        stream.pending.append(frame)
        stream.pending_bytes += len(frame)
        BUFFER.inc(metrics.STREAM_EVENTS, "message")
        # During a replay, held rows (at most a buffer's worth) are released at once when the replay reaches them
        # and written right after: allow them on top of the buffer, so catching up never counts as slow.
        if stream.pending_bytes > self.limits.buffer_bytes * (2 if stream.reading else 1):
            self.end(stream, "slow")

    def _offer(self, stream: Stream, number: int, frame: bytes, since: float) -> None:
        """A stored row for this stream: hand it out in order, hold it, or drop it as a duplicate."""
        if number <= stream.last or stream.ended:
            return
        if number == stream.last + 1 and not stream.ahead:
            self._deliver(stream, number, frame)
            self._wake(stream)
            return
        if stream.ahead is None:
            stream.ahead = {}
            stream.gap_check_at = self.clock() + GAP_CHECK_SECONDS
        if number not in stream.ahead:
            stream.ahead[number] = (frame, since)
            stream.ahead_bytes += len(frame)
            if stream.ahead_bytes > self.limits.buffer_bytes:
                if stream.reading:  # not a slow client: the replay is behind the live rows; it reads them itself
                    stream.ahead, stream.ahead_bytes, stream.reread = None, 0, True
                    self.gapped.discard(stream)
                    return
                self.end(stream, "slow")
                return
        self._advance(stream, self.clock())

    def _advance(self, stream: Stream, now: float) -> None:
        """Hand out held rows that are next, or that follow a hole older than the gap rule allows."""
        ahead = stream.ahead
        delivered = False
        while ahead:
            number = min(ahead)
            frame, since = ahead[number]
            if number <= stream.last:
                del ahead[number]
                stream.ahead_bytes -= len(frame)
                continue
            if number != stream.last + 1 and now - since < self.limits.gap_seconds:
                break  # a younger hole: wait for it
            del ahead[number]
            stream.ahead_bytes -= len(frame)
            self._deliver(stream, number, frame)
            delivered = True
            if stream.ended:
                return
        if not ahead:
            stream.ahead = None
            stream.ahead_bytes = 0
            self.gapped.discard(stream)
        else:
            self.gapped.add(stream)
        if delivered:
            self._wake(stream)

    def _offer_rows(self, stream: Stream, rows: list[Row]) -> None:
        now = self.clock()
        edits = stream.room.edits
        for number, body, age in rows:
            if number > stream.last:
                # A row read may predate an edit announced since: the newest known body wins.
                known = edits.get(number)
                self._offer(stream, number, message_frame(number, known[1] if known else body), now - age)

    @staticmethod
    def _wake(stream: Stream) -> None:
        waiter = stream.waiter
        if waiter is not None:
            stream.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- announcements ---------------------------------------------------------------------------------------
    def announce(self, key: str, body: bytes) -> None:
        """An announcement from the broker (subscriber callback): fan it out to the room's streams."""
        room = self.rooms.get(key)
        if room is None or not room.streams:
            return
        committed_at, rows = announcements.decode(body)
        if committed_at:
            # Once per announcement, not per stream: written directly (BUFFER takes labelled series only).
            metrics.STREAM_LAG_SECONDS.observe(max(time.time() - committed_at, 0.0))
        now = self.clock()
        for number, text, version in rows:
            if version:
                self._edit(room, number, text, version)
                continue
            known = room.edits.get(number)
            frame = message_frame(number, known[1] if known else text)
            for stream in room.streams:
                self._offer(stream, number, frame, now)

    def _edit(self, room: Room, number: int, body: str, version: int) -> None:
        known = room.edits.get(number)
        if known is not None and known[0] >= version:
            return  # an older edit announced late: the newer one was shown
        room.edits[number] = (version, body)
        if len(room.edits) > EDITS_PER_ROOM:
            room.edits.pop(next(iter(room.edits)))
        frame = edit_frame(number, body, version)
        for stream in room.streams:
            if stream.ended:
                continue
            if number <= stream.last:
                stream.pending.append(frame)
                stream.pending_bytes += len(frame)
                BUFFER.inc(metrics.STREAM_EVENTS, "edit")
                if stream.pending_bytes > self.limits.buffer_bytes:
                    self.end(stream, "slow")
                self._wake(stream)
            elif stream.ahead and number in stream.ahead:  # held: it goes out with the new body
                old, since = stream.ahead[number]
                new = message_frame(number, body)
                stream.ahead[number] = (new, since)
                stream.ahead_bytes += len(new) - len(old)

    # -- subscriptions ---------------------------------------------------------------------------------------
    def _start(self) -> None:
        """Start the ticker and the announcement consumer with the first stream (not before: no cost without)."""
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick_forever(), name="stream-ticker")
            self._next_heartbeat = self.clock() + self.limits.heartbeat_seconds
        if self.subscriber is None:
            self.subscriber = self._make_subscriber(self)
            self.subscriber.start()

    async def _register(self, room: Room) -> None:
        """List the room's chat for the writers (bounded wait); on failure the ticker tries again."""
        if self.registry is None or room.registered:
            return
        try:
            await asyncio.wait_for(self.registry.register([room.key]), REGISTER_WAIT_SECONDS)
            room.registered = True
        except Exception as exc:  # Redis away: writers announce every chat then (announcements.listened_chats)
            log.warning("stream registry: %s not listed (%s)", room.key, exc.__class__.__name__)

    async def _refresh_registry(self) -> None:
        keys = [key for key, room in self.rooms.items() if room.streams]
        try:
            for start in range(0, len(keys), 1000):
                await asyncio.wait_for(self.registry.register(keys[start : start + 1000]), REGISTER_WAIT_SECONDS)
        except Exception as exc:
            log.warning("stream registry not refreshed (%s)", exc.__class__.__name__)
            return
        for key in keys:
            room = self.rooms.get(key)
            if room is not None:
                room.registered = True

    async def _subscribed(self, room: Room) -> None:
        """List and bind the room's chat (bounded waits), so that the replay that follows leaves no seam."""
        await self._register(room)
        if room.bound is None:
            room.bound = self.subscriber.bind(room.key) if self.subscriber is not None else None
        if room.bound is not None and not room.bound.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(room.bound), BIND_WAIT_SECONDS)
        # Not bound (broker away): replay anyway; on_ready binds the room and re-reads it from MySQL.

    def on_subscriber_ready(self) -> None:
        """The announcement queue is (again) consumed: bind every room, then re-read each from MySQL."""
        for room in list(self.rooms.values()):
            if not room.streams:
                del self.rooms[room.key]
                continue
            room.bound = self.subscriber.bind(room.key)
            self._spawn(self._resync(room, room.bound))

    def on_subscriber_lost(self) -> None:
        """The queue is gone with its connection: every binding too; announcements may have been missed."""
        for room in self.rooms.values():
            room.bound = None

    async def _resync(self, room: Room, bound: asyncio.Future | None) -> None:
        """After a (re)connection: read the room's chat after its streams' positions, once bound."""
        if bound is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(bound), BIND_WAIT_SECONDS * 5)
        await self._read_into(room, "resync", upto=MAX_NUMBER)

    async def _read_into(self, room: Room, cause: str, upto: int, streams: list[Stream] | None = None) -> None:
        """Read ``(min position, upto]`` of a room's chat in pages and offer the rows to its streams."""
        targets = [s for s in (streams if streams is not None else list(room.streams)) if not s.ended]
        if not targets:
            return
        for stream in targets:
            stream.reading = True
        try:
            cursor = min(s.last for s in targets)
            while True:
                async with self._reads:
                    rows = await self.reader.range(room.application_id, room.chat_number, cursor, upto, PAGE)
                BUFFER.inc(metrics.STREAM_READS, cause)
                for stream in targets:
                    self._offer_rows(stream, rows)
                if len(rows) < PAGE:
                    break
                cursor = rows[-1][0]
        except Exception as exc:  # MySQL away: the ticker tries again (gaps) or the next reconnect does (resync)
            log.warning("stream %s read of %s failed: %s", cause, room.key, exc.__class__.__name__)
        finally:
            now = self.clock()
            for stream in targets:
                stream.reading = False
                stream.gap_check_at = now + GAP_RECHECK_SECONDS
                if stream.ahead:
                    self._advance(stream, now)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- the ticker ------------------------------------------------------------------------------------------
    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            try:
                self.tick(self.clock())
            except Exception:
                log.exception("stream ticker step failed")

    def tick(self, now: float) -> None:
        """One step of the ticker: each job in turn (see each method for when it acts)."""
        self._schedule_tenant_check(now)
        self._check_gaps(now)
        self._keep_registry(now)
        self._send_heartbeats()
        if now >= self._next_heartbeat:  # once per heartbeat period
            self._next_heartbeat = now + self.limits.heartbeat_seconds
            self._plan_heartbeats()
            self._drop_empty_rooms(now)

    def _schedule_tenant_check(self, now: float) -> None:
        """Every ``TENANT_CHECK_SECONDS``, a round of the tenant rules of open streams' tokens (one at a time)."""
        if self.standing is None or now < self._next_standing or self._checking:
            return
        self._next_standing = now + TENANT_CHECK_SECONDS
        tokens = {s.token for room in self.rooms.values() for s in room.streams if s.token and not s.ended}
        if tokens:
            self._checking = True  # one round at a time: a slow directory never piles rounds up
            self._spawn(self._check_tokens(tokens))

    def _check_gaps(self, now: float) -> None:
        """Apply the gap rule to streams holding rows (it is time-based), and read the holes due for a MySQL look."""
        if not self.gapped:
            return
        due: dict[Room, list[Stream]] = {}
        for stream in list(self.gapped):
            if stream.ended:
                self.gapped.discard(stream)
                continue
            self._advance(stream, now)  # a hole may have aged past the gap rule
            if stream.ahead and not stream.reading and now >= stream.gap_check_at:
                due.setdefault(stream.room, []).append(stream)
        for room, streams in due.items():
            upto = max(max(s.ahead) for s in streams if s.ahead)
            self._spawn(self._read_into(room, "gap", upto, streams))

    def _keep_registry(self, now: float) -> None:
        """Refresh the writers' registry every ``REGISTRY_REFRESH_SECONDS``; in between, list one room it lacks."""
        if self.registry is None:
            return
        if now >= self._next_refresh:
            self._next_refresh = now + REGISTRY_REFRESH_SECONDS
            self._spawn(self._refresh_registry())
            return
        for room in self.rooms.values():
            if room.streams and not room.registered:
                self._spawn(self._register(room))
                break  # one at a time: they all go with the next refresh anyway

    def _send_heartbeats(self) -> None:
        """This tick's slice of the period's heartbeats: thousands of streams never wake at once."""
        if not self._beats:
            return
        for stream in self._beats[-self._beats_per_tick :]:
            if not stream.pending and not stream.ended:
                stream.pending.append(HEARTBEAT)
                self._wake(stream)
        del self._beats[-self._beats_per_tick :]

    def _plan_heartbeats(self) -> None:
        """The streams to beat this period, sliced so that they are all done in half the period."""
        self._beats = [stream for room in self.rooms.values() for stream in room.streams]
        ticks = max(int(self.limits.heartbeat_seconds / TICK_SECONDS) // 2, 1)
        self._beats_per_tick = max(-(-len(self._beats) // ticks), 1)

    def _drop_empty_rooms(self, now: float) -> None:
        """Forget, and unbind, the rooms nobody has listened to for ``ROOM_LINGER_SECONDS``."""
        for key, room in list(self.rooms.items()):
            if not room.streams and now - room.empty_since > ROOM_LINGER_SECONDS:
                del self.rooms[key]
                if room.bound is not None and self.subscriber is not None:
                    self.subscriber.unbind(key)

    async def _check_tokens(self, tokens: set[str]) -> None:
        """One round of the tenant rules: one directory lookup per distinct token; refused tokens' streams end."""
        try:
            refused: dict[str, tuple[str, str]] = {}
            for token in tokens:
                try:
                    verdict = await self.standing(token)
                except Exception as exc:  # the check could not be made: the stream stays, the next round retries
                    log.warning("stream tenant check failed: %s", exc.__class__.__name__)
                    continue
                if verdict is not None:
                    refused[token] = verdict
            if refused:
                for room in list(self.rooms.values()):
                    for stream in list(room.streams):
                        verdict = refused.get(stream.token)
                        if verdict is not None:
                            self.refuse(stream, *verdict)
        finally:
            self._checking = False

    # -- shutdown --------------------------------------------------------------------------------------------
    def end_all(self, reason: str = "shutdown") -> None:
        """End every stream (the server is shutting down: clients reconnect to another process)."""
        self.closing = True
        for room in list(self.rooms.values()):
            for stream in list(room.streams):
                self.end(stream, reason)

    async def end_all_and_wait(self, timeout: float = 2.0) -> None:
        """End every stream and wait (bounded) for their responses to finish: the server is shutting down and
        waits for open responses before the lifespan shutdown (``chat_api.worker.StreamEndingServer``)."""
        self.end_all()
        deadline = time.monotonic() + timeout
        while self.open_count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def close(self, drain_seconds: float = 2.5) -> None:
        """End every stream, give their responses ``drain_seconds`` to finish, stop the ticker and the consumer."""
        await self.end_all_and_wait(drain_seconds)  # the responses finish on their own tasks
        for task in [self._ticker, *self._background]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._ticker = None
        if self.subscriber is not None:
            await self.subscriber.close()
