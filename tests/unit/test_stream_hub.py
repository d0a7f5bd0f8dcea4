"""The live-stream rules of chat_api.streams.hub on fakes: order, exactly once, the gap rule, resume, limits, cut-off.

No broker and no MySQL: a fake reader holds the stored rows (with their ages), a fake subscriber binds at once,
and a fake clock drives the gap rule. The real processes are exercised in tests/integration/test_streams.py.
"""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from chat_api.streams.hub import TENANT_CHECK_SECONDS, Refused, StreamHub, StreamLimits
from chat_common.wire import announcements
from chat_common.wire.announcements import Committed

APP, CHAT = 7, 3
KEY = announcements.routing_key(APP, CHAT)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeReader:
    """Stored rows of one chat: number -> (body, stored at, on the fake clock)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.rows: dict[int, tuple[str, float]] = {}
        self.reads = 0

    def store(self, number: int, body: str | None = None, age: float = 0.0) -> None:
        self.rows[number] = (body or f"m{number}", self.clock.now - age)

    async def range(self, application_id, chat_number, after, upto, limit):
        self.reads += 1
        numbers = sorted(n for n in self.rows if after < n <= upto)[:limit]
        return [(n, self.rows[n][0], self.clock.now - self.rows[n][1]) for n in numbers]


class FakeSubscriber:
    def __init__(self) -> None:
        self.bound: list[str] = []
        self.unbound: list[str] = []

    def start(self) -> None:
        pass

    def bind(self, key: str):
        self.bound.append(key)
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    def unbind(self, key: str) -> None:
        self.unbound.append(key)

    async def close(self) -> None:
        pass


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def reader(clock) -> FakeReader:
    return FakeReader(clock)


@pytest.fixture
def subscriber() -> FakeSubscriber:
    return FakeSubscriber()


def make_hub(reader, subscriber, clock, **limits) -> StreamHub:
    return StreamHub(reader, lambda hub: subscriber, StreamLimits(**limits), clock=clock)


def announce(hub: StreamHub, *numbers: int, version: int = 0, body: str | None = None) -> None:
    rows = [Committed(APP, CHAT, n, body or f"m{n}", version) for n in numbers]
    for key, payload in announcements.encode(rows, time.time()).items():
        hub.announce(key, payload)


def parse(frames: list[bytes]) -> list[tuple[str, dict]]:
    """(event, data) of every event in the frames, heartbeats and retry hints left out."""
    events = []
    for block in b"".join(frames).split(b"\n\n"):
        fields = dict(line.split(b": ", 1) for line in block.split(b"\n") if line and not line.startswith(b":"))
        if b"event" in fields:
            events.append((fields[b"event"].decode(), orjson.loads(fields[b"data"])))
    return events


class Client:
    """Drives a stream's body the way Falcon does, collecting what it would write."""

    def __init__(self, hub: StreamHub, after: int, token: str | None = None) -> None:
        self.aborted = False
        self.stream = hub.open(APP, CHAT, after, self._abort, token=token)
        self.frames: list[bytes] = []
        self.task = asyncio.get_running_loop().create_task(self._run(hub.events(self.stream)))

    def _abort(self) -> None:
        self.aborted = True

    async def _run(self, body) -> None:
        async for frame in body:
            self.frames.append(frame.serialize())

    def numbers(self) -> list[int]:
        return [data["message_number"] for event, data in parse(self.frames) if event == "message"]


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def listening_from_the_start(reader, subscriber, clock, **limits) -> tuple[StreamHub, Client]:
    """A hub and one client of it that listens from the chat's start, its replay done."""
    hub = make_hub(reader, subscriber, clock, **limits)
    client = Client(hub, after=0)
    await settle()
    return hub, client


async def test_live_events_in_order_exactly_once(reader, subscriber, clock):
    hub, client = await listening_from_the_start(reader, subscriber, clock)
    assert subscriber.bound == [KEY]
    announce(hub, 1, 2)
    announce(hub, 2, 3)  # a redelivered batch announces again
    announce(hub, 1)
    await settle()
    assert client.numbers() == [1, 2, 3]
    assert client.frames[0] == b"retry: 3000\n\n"
    await hub.close()
    await client.task


async def test_resume_replays_stored_then_live_without_seam(reader, subscriber, clock):
    for n in range(1, 251):  # several replay pages
        reader.store(n, age=60)
    hub = make_hub(reader, subscriber, clock)
    client = Client(hub, after=42)
    announce(hub, 250, 251)  # arrives while the replay has not run yet: held, then the seam is exact
    reader.store(251)
    await settle()
    assert client.numbers() == list(range(43, 252))
    await hub.close()


async def test_a_hole_is_held_then_filled_by_its_announcement(reader, subscriber, clock):
    hub, client = await listening_from_the_start(reader, subscriber, clock)
    announce(hub, 1, 3)
    await settle()
    assert client.numbers() == [1]
    announce(hub, 2)
    await settle()
    assert client.numbers() == [1, 2, 3]
    await hub.close()


async def test_a_hole_is_read_from_mysql_when_its_announcement_is_lost(reader, subscriber, clock):
    hub, client = await listening_from_the_start(reader, subscriber, clock)
    reader.store(1)
    reader.store(2)  # committed, announcement lost
    reader.store(3)
    announce(hub, 1, 3)
    await settle()
    assert client.numbers() == [1]
    clock.now += 0.6
    hub.tick(clock.now)
    await settle()
    assert client.numbers() == [1, 2, 3]
    await hub.close()


async def test_a_burned_number_is_skipped_after_the_gap_rule_and_never_blocks(reader, subscriber, clock):
    hub, client = await listening_from_the_start(reader, subscriber, clock, gap_seconds=10)
    reader.store(1)
    reader.store(3)  # 2 was burned: never written
    announce(hub, 1, 3)
    for _ in range(9):
        clock.now += 1
        hub.tick(clock.now)
        await settle()
    assert client.numbers() == [1]  # still waiting: 2 could be in a retry tier
    clock.now += 1.5
    hub.tick(clock.now)
    await settle()
    assert client.numbers() == [1, 3]
    announce(hub, 2)  # written after all, too late: not shown out of order
    await settle()
    assert client.numbers() == [1, 3]
    await hub.close()


async def test_replay_skips_an_old_burned_number_at_once(reader, subscriber, clock):
    for n in (1, 2, 4, 5):
        reader.store(n, age=3600)
    hub, client = await listening_from_the_start(reader, subscriber, clock)
    assert client.numbers() == [1, 2, 4, 5]
    await hub.close()


async def test_edits_follow_delivered_messages_and_replace_held_ones(reader, subscriber, clock):
    hub, client = await listening_from_the_start(reader, subscriber, clock)
    announce(hub, 1, 3)
    announce(hub, 1, version=5, body="one, edited")
    announce(hub, 1, version=4, body="older edit")  # late and older: not shown
    announce(hub, 3, version=6, body="three, edited")  # 3 is held: it goes out with this body
    announce(hub, 2)
    await settle()
    events = parse(client.frames)
    assert events == [
        ("message", {"message_number": 1, "body": "m1"}),
        ("edit", {"message_number": 1, "body": "one, edited", "version": 5}),
        ("message", {"message_number": 2, "body": "m2"}),
        ("message", {"message_number": 3, "body": "three, edited"}),
    ]
    await hub.close()


async def test_broker_reconnect_resyncs_from_mysql(reader, subscriber, clock):
    hub, client = await listening_from_the_start(reader, subscriber, clock)
    announce(hub, 1)
    hub.on_subscriber_lost()
    reader.store(1)
    reader.store(2)  # announced while this worker's queue did not exist
    reader.store(3)
    hub.on_subscriber_ready()
    await settle()
    assert client.numbers() == [1, 2, 3]
    assert subscriber.bound == [KEY, KEY]
    await hub.close()


async def test_limits_per_process_and_per_tenant(reader, subscriber, clock):
    hub = make_hub(reader, subscriber, clock, max_per_process=3, max_per_tenant=2)
    hub.open(APP, CHAT, 0, lambda: None)
    hub.open(APP, CHAT + 1, 0, lambda: None)
    with pytest.raises(Refused) as refused:
        hub.open(APP, CHAT, 0, lambda: None)
    assert refused.value.limit == "tenant"
    hub.open(APP + 1, CHAT, 0, lambda: None)
    with pytest.raises(Refused) as refused:
        hub.open(APP + 2, CHAT, 0, lambda: None)
    assert refused.value.limit == "process"
    await hub.close(drain_seconds=0)  # its streams have no response body running


async def test_a_slow_client_is_cut_off_and_its_memory_freed(reader, subscriber, clock):
    hub = make_hub(reader, subscriber, clock, buffer_bytes=2000)
    aborted = []
    stream = hub.open(APP, CHAT, 0, lambda: aborted.append(True))  # nobody reads its body
    for n in range(1, 100):
        announce(hub, n, body="x" * 100)
    assert aborted == [True]
    assert stream.ended == "slow"
    assert stream.pending == [] and stream.ahead is None
    await hub.close(drain_seconds=0)  # its streams have no response body running


class GatedReader(FakeReader):
    """A reader whose first read waits for the test: announcements pile up while the replay is behind."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.gate = asyncio.Event()

    async def range(self, application_id, chat_number, after, upto, limit):
        await self.gate.wait()
        return await super().range(application_id, chat_number, after, upto, limit)


async def test_announcements_overflowing_during_a_replay_are_read_again_not_cut(clock, subscriber):
    reader = GatedReader(clock)
    for n in range(1, 151):
        reader.store(n, body="x" * 100, age=60)
    hub, client = await listening_from_the_start(reader, subscriber, clock, buffer_bytes=2000)
    for n in range(151, 201):  # stored and announced while the replay waits: far more than the buffer holds
        reader.store(n, body="x" * 100)
        announce(hub, n, body="x" * 100)
    reader.gate.set()
    await settle()
    assert not client.aborted and client.stream.ended is None
    assert client.numbers() == list(range(1, 201))  # every row once, in order, the dropped ones read again
    await hub.close()


async def test_a_replay_that_cannot_progress_past_a_young_hole_is_still_cut(clock, subscriber):
    reader = FakeReader(clock)
    for n in range(2, 60):  # number 1 is a young hole: everything after it is held back
        reader.store(n, body="x" * 100)
    hub, client = await listening_from_the_start(reader, subscriber, clock, buffer_bytes=2000)
    assert client.aborted and client.stream.ended == "slow"  # bounded memory, no endless re-reading
    assert reader.reads <= 3
    await hub.close()


async def test_heartbeats_and_unbinding_of_empty_rooms_come_from_one_ticker(reader, subscriber, clock):
    hub, client = await listening_from_the_start(reader, subscriber, clock, heartbeat_seconds=15)
    clock.now += 16
    hub.tick(clock.now)  # due: this period's heartbeats are spread over the ticks that follow
    hub.tick(clock.now + 0.25)
    await settle()
    assert client.frames[-1] == b": heartbeat\n\n"
    hub.end(client.stream, "client")
    await client.task
    assert hub.open_count == 0
    clock.now += 31
    hub._next_heartbeat = 0
    hub.tick(clock.now)
    assert subscriber.unbound == [KEY]
    await hub.close()


async def test_heartbeats_of_many_streams_are_spread_over_the_period(reader, subscriber, clock):
    hub = make_hub(reader, subscriber, clock, heartbeat_seconds=15, max_per_tenant=1_000)
    streams = [hub.open(APP, n, 0, lambda: None) for n in range(1, 601)]
    clock.now += 16
    hub.tick(clock.now)
    beaten = []
    for step in range(1, 40):
        hub.tick(clock.now + step * 0.25)
        beaten.append(sum(1 for s in streams if s.pending))
    assert beaten[0] <= 600 // 10  # a slice per tick, not all at once
    assert beaten[-1] == 600  # and all of them within the period
    await hub.close(drain_seconds=0)  # its streams have no response body running


class FakeRegistry:
    def __init__(self) -> None:
        self.listed: list[str] = []
        self.fail = False

    async def register(self, rooms):
        if self.fail:
            raise ConnectionError("redis down")
        self.listed += rooms


async def test_a_chat_is_listed_for_the_writers_before_its_replay_reads_anything(reader, subscriber, clock):
    registry = FakeRegistry()
    listed_at_first_read = []
    range_of = reader.range

    async def spying_range(*args):
        listed_at_first_read.append(list(registry.listed))
        return await range_of(*args)

    reader.range = spying_range
    hub = StreamHub(reader, lambda hub: subscriber, StreamLimits(), clock=clock, registry=registry)
    Client(hub, after=0)
    await settle()
    assert listed_at_first_read[0] == [KEY]
    await hub.close()


async def test_an_unlisted_chat_is_listed_again_by_the_ticker(reader, subscriber, clock):
    registry = FakeRegistry()
    registry.fail = True
    hub = StreamHub(reader, lambda hub: subscriber, StreamLimits(), clock=clock, registry=registry)
    client = Client(hub, after=0)
    await settle()
    assert registry.listed == [] and client.frames  # Redis away: the stream is served all the same
    registry.fail = False
    hub.tick(clock.now)  # the periodic refresh lists every room
    await settle()
    assert registry.listed == [KEY]
    await hub.close()


async def test_shutdown_ends_every_stream_cleanly(reader, subscriber, clock):
    hub = make_hub(reader, subscriber, clock)
    clients = [Client(hub, after=0) for _ in range(3)]
    await settle()
    await hub.close()
    for client in clients:
        await asyncio.wait_for(client.task, 1)
        assert not client.aborted
    assert hub.open_count == 0
    with pytest.raises(Refused):
        hub.open(APP, CHAT, 0, lambda: None)


async def test_the_server_ends_the_streams_of_the_hub_it_is_given_before_its_own_shutdown(reader, subscriber, clock):
    # The hub reaches the server explicitly (StreamingApp.streams -> ApiWorker -> StreamEndingServer): no registry.
    from uvicorn.config import Config
    from uvicorn.lifespan.off import LifespanOff

    from chat_api.worker import StreamEndingServer

    hub = make_hub(reader, subscriber, clock)
    clients = [Client(hub, after=0) for _ in range(2)]
    await settle()
    other = make_hub(reader, subscriber, clock)  # another hub of the process: not this server's
    bystander = Client(other, after=0)
    await settle()
    server = StreamEndingServer(Config(app=None), streams=hub)
    server.lifespan = LifespanOff(server.config)  # what Server.startup sets (with the listening servers)
    server.servers = []
    await server.shutdown()
    for client in clients:
        await asyncio.wait_for(client.task, 1)
        assert client.stream.ended == "shutdown" and not client.aborted
    assert hub.open_count == 0
    assert not bystander.stream.ended
    await other.close()
    await hub.close()


async def test_the_app_carries_its_hub_and_closes_it_at_the_lifespan_shutdown(reader, subscriber, clock):
    import falcon.testing

    from chat_api.app import create_app
    from chat_common.config import Settings
    from tests.unit.fakes import build

    hub = make_hub(reader, subscriber, clock)
    service, _ = build()
    app = create_app(service, Settings(), {}, lifecycle=None, streams=hub)
    assert app.streams is hub
    async with falcon.testing.ASGIConductor(app):
        client = Client(hub, after=0)
        await settle()
    await asyncio.wait_for(client.task, 1)
    assert client.stream.ended == "shutdown" and hub.closing


class FakeStanding:
    """``ChatService.token_standing`` on a dict: token -> (reason, error) once refused; counts the checks."""

    def __init__(self) -> None:
        self.refused: dict[str, tuple[str, str]] = {}
        self.checks: list[str] = []
        self.failing = False

    async def __call__(self, token: str) -> tuple[str, str] | None:
        self.checks.append(token)
        if self.failing:
            raise ConnectionError("directory unavailable")
        return self.refused.get(token)


async def test_a_suspended_tenant_s_streams_get_an_error_event_and_end_at_the_next_check(reader, subscriber, clock):
    standing = FakeStanding()
    hub = StreamHub(reader, lambda hub: subscriber, StreamLimits(), clock=clock, standing=standing)
    suspended = [Client(hub, after=0, token="tok-a") for _ in range(3)]
    other = Client(hub, after=0, token="tok-b")
    await settle()
    hub.tick(clock.now)
    await settle()
    assert sorted(standing.checks) == ["tok-a", "tok-b"]  # one check per distinct token, not per stream
    standing.refused["tok-a"] = ("suspended", "application suspended")
    clock.now += TENANT_CHECK_SECONDS / 2
    hub.tick(clock.now)  # not due yet: no round, nothing ends
    await settle()
    assert len(standing.checks) == 2 and hub.open_count == 4
    clock.now += TENANT_CHECK_SECONDS
    hub.tick(clock.now)
    await settle()
    assert len(standing.checks) == 4
    for client in suspended:
        await asyncio.wait_for(client.task, 1)  # the response ended...
        assert not client.aborted  # ...cleanly, with the error as its last event
        assert parse(client.frames)[-1] == ("error", {"error": "application suspended"})
    assert hub.open_count == 1 and not other.task.done()
    announce(hub, 1)
    await settle()
    assert other.numbers() == [1] and all(c.numbers() == [] for c in suspended)
    await hub.close()


async def test_a_rotated_away_token_past_its_grace_ends_its_streams_as_not_found(reader, subscriber, clock):
    standing = FakeStanding()
    hub = StreamHub(reader, lambda hub: subscriber, StreamLimits(), clock=clock, standing=standing)
    old = Client(hub, after=0, token="old")
    new = Client(hub, after=0, token="new")
    await settle()
    announce(hub, 1, 3)  # a held row does not delay the end
    standing.refused["old"] = ("expired_token", "application not found")
    hub.tick(clock.now)
    await settle()
    await asyncio.wait_for(old.task, 1)
    assert parse(old.frames)[-1] == ("error", {"error": "application not found"}) and not old.aborted
    assert old.numbers() == [1] and hub.open_count == 1 and not new.task.done()
    await hub.close()


async def test_a_failed_tenant_check_keeps_the_streams_and_is_retried(reader, subscriber, clock):
    standing = FakeStanding()
    standing.failing = True
    hub = StreamHub(reader, lambda hub: subscriber, StreamLimits(), clock=clock, standing=standing)
    client = Client(hub, after=0, token="tok")
    await settle()
    hub.tick(clock.now)
    await settle()
    assert standing.checks == ["tok"] and hub.open_count == 1 and not client.task.done()
    standing.failing = False
    standing.refused["tok"] = ("suspended", "application suspended")
    clock.now += TENANT_CHECK_SECONDS
    hub.tick(clock.now)
    await settle()
    await asyncio.wait_for(client.task, 1)
    assert hub.open_count == 0
    await hub.close()
