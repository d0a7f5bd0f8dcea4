"""Which reads a read replica may answer (the service's rule), and how the replica's state is judged (its monitor).

The rule: pages and searches of a tenant go to the replica only while one may serve and the tenant's last edit is
older than how far behind the replica may be; single reads, reads after an edit and numbering never do. The
monitor: ``SHOW REPLICA STATUS`` rows → lag, and the bound on staleness it implies.
"""

from __future__ import annotations

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from chat_api.adapters.replica import ReadRouter, ReplicaMonitor, replica_name, replication_lag
from chat_api.model import DatabaseUnavailable
from tests.unit.fakes import chat_with_messages


async def reads_of(service, app) -> None:
    await service.list_chats(app.token)
    await service.list_messages(app.token, 1)
    await service.search_messages(app.token, 1, "message")


# -- the service's rule ----------------------------------------------------------------------------------------
async def test_without_a_replica_every_read_is_the_primarys(service, world):
    app = await chat_with_messages(service, world, 2)
    await reads_of(service, app)
    assert world.repository.replica_asked == [False, False, False]
    assert world.numbering.called("last_edit") == []  # no Redis round trip when there is nothing to decide


async def test_pages_and_searches_of_a_tenant_that_never_edited_may_use_the_replica(service, world):
    app = await chat_with_messages(service, world, 2)
    world.repository.replica_bound = 2.0
    await reads_of(service, app)
    assert world.repository.replica_asked == [True, True, True]


async def test_a_tenant_that_just_edited_reads_the_primary_while_the_others_keep_the_replica(service, world):
    editor = await chat_with_messages(service, world, 2)
    other = await chat_with_messages(service, world, 2)
    world.repository.replica_bound = 2.0
    await service.edit_message(editor.token, 1, 1, "edited")
    await reads_of(service, editor)
    assert world.repository.replica_asked == [False, False, False]
    assert (await service.list_messages(editor.token, 1)).items[0].body == "edited"
    world.repository.replica_asked.clear()
    await reads_of(service, other)
    assert world.repository.replica_asked == [True, True, True]


async def test_a_rename_counts_as_an_edit(service, world):
    app = await chat_with_messages(service, world, 2)
    world.repository.replica_bound = 2.0
    await service.rename_chat(app.token, 1, "renamed")
    await service.list_chats(app.token)
    assert world.repository.replica_asked == [False]


async def test_an_edit_older_than_the_replicas_lag_bound_no_longer_holds_reads_on_the_primary(service, world):
    app = await chat_with_messages(service, world, 2)
    await service.edit_message(app.token, 1, 1, "edited")
    world.numbering.hashes[app.id].edited -= 3_000_000  # three seconds ago, in microseconds
    world.repository.replica_bound = 2.0
    await service.list_messages(app.token, 1)
    world.repository.replica_bound = 4.0  # the replica fell further behind: the same edit is recent again
    await service.list_messages(app.token, 1)
    assert world.repository.replica_asked == [True, False]


async def test_when_the_edit_clock_cannot_be_read_the_primary_answers(service, world):
    app = await chat_with_messages(service, world, 2)
    world.repository.replica_bound = 2.0
    world.numbering.fail("last_edit", RedisConnectionError("down"))
    page = await service.list_messages(app.token, 1)
    assert len(page.items) == 2 and world.repository.replica_asked == [False]


async def test_single_reads_never_ask_for_the_replica(service, world):
    app = await chat_with_messages(service, world, 2)
    world.repository.replica_bound = 2.0
    await service.get_chat(app.token, 1)
    await service.get_message(app.token, 1, 1)
    assert world.repository.replica_asked == [] and world.numbering.called("last_edit") == []


# -- the monitor -------------------------------------------------------------------------------------------------
def status(io="Yes", sql="Yes", lag=0, names=("Slave_IO_Running", "Slave_SQL_Running", "Seconds_Behind_Master")):
    return dict(zip(names, (io, sql, lag), strict=True))


@pytest.mark.parametrize(
    ("rows", "lag"),
    [
        ([], 0.0),  # no replica at all (a read endpoint of a synchronous cluster)
        ([status(lag=0)], 0.0),
        ([status(lag=7)], 7.0),
        ([status(lag=1), status(lag=4)], 4.0),  # multi-source: the slowest connection counts
        ([status(sql="No", lag=None)], None),
        ([status(io="Connecting", lag=0)], None),  # not receiving: its 0 says nothing
        ([status(lag=None)], None),
        ([status(lag=3, names=("Replica_IO_Running", "Replica_SQL_Running", "Seconds_Behind_Source"))], 3.0),
    ],
)
def test_replication_lag_from_the_status_rows(rows, lag):
    assert replication_lag(rows) == lag


class StatusDatabase:
    """The replica's pool as far as the monitor and the router use it (a fake of our own adapter)."""

    def __init__(self, rows: list[dict] | Exception, name: str = "replica") -> None:
        self.answer = rows
        self.name = name
        self.reads = 0

    async def named_rows(self, sql: str) -> list[dict]:
        assert sql == "SHOW REPLICA STATUS"
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    async def rows(self, statement, params) -> list[tuple]:
        self.reads += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return [(self.name,)]


async def test_the_monitor_serves_within_max_lag_and_bounds_staleness_by_lag_and_probe_age():
    monitor = ReplicaMonitor(StatusDatabase([status(lag=2)]), max_lag=5)
    assert monitor.lag_bound() is None  # not probed yet
    assert await monitor.probe() == 2.0
    assert 3.0 <= monitor.lag_bound() < 3.5  # 2 s reported, < 1 s truncated, the probe's age
    monitor.db.answer = [status(lag=9)]
    assert await monitor.probe() is None and monitor.lag_bound() is None  # beyond max_lag: set aside


async def test_an_unreachable_or_refusing_replica_is_set_aside():
    monitor = ReplicaMonitor(StatusDatabase(DatabaseUnavailable("gone")), max_lag=5)
    assert await monitor.probe() is None
    monitor.db.answer = PermissionError("SHOW REPLICA STATUS needs REPLICA MONITOR")
    assert await monitor.probe() is None
    monitor.db.answer = [status(lag=0)]
    assert await monitor.probe() == 0.0


async def test_the_router_falls_back_to_the_primary_and_sets_a_failing_replica_aside():
    primary, replica_db = StatusDatabase([], "primary"), StatusDatabase([status(lag=0)])
    monitor = ReplicaMonitor(replica_db, max_lag=5)
    router = ReadRouter(primary, [monitor])
    await monitor.probe()
    assert await router.run(True, lambda db: db.rows(None, {})) == [("replica",)]
    assert await router.run(False, lambda db: db.rows(None, {})) == [("primary",)]
    replica_db.answer = DatabaseUnavailable("gone")
    await router.run(True, lambda db: db.rows(None, {}))
    assert primary.reads == 2 and monitor.lag_bound() is None  # this read answered by the primary
    await router.run(True, lambda db: db.rows(None, {}))  # set aside: not even tried until a probe finds it
    assert (replica_db.reads, primary.reads) == (2, 3)


async def test_several_replicas_take_turns_and_a_failing_one_hands_over_to_the_next():
    primary = StatusDatabase([], "primary")
    a, b = StatusDatabase([status(lag=0)], "a"), StatusDatabase([status(lag=2)], "b")
    monitors = [ReplicaMonitor(a, max_lag=5, name="a:3306"), ReplicaMonitor(b, max_lag=5, name="b:3306")]
    router = ReadRouter(primary, monitors)
    assert router.lag_bound() is None  # none probed yet: none may serve
    for monitor in monitors:
        await monitor.probe()
    assert 3.0 <= router.lag_bound() < 3.5  # the larger bound: whichever answers is within it
    answers = [(await router.run(True, lambda db: db.rows(None, {})))[0][0] for _ in range(4)]
    assert sorted(answers) == ["a", "a", "b", "b"]  # taking turns
    b.answer = DatabaseUnavailable("gone")
    answers = [(await router.run(True, lambda db: db.rows(None, {})))[0][0] for _ in range(3)]
    assert answers == ["a", "a", "a"] and primary.reads == 0  # b failed once, set aside; a served every read
    assert monitors[1].lag_bound() is None  # b is set aside: only a's bound counts now (b's alone is >= 3 s)
    assert router.lag_bound() < 3.0  # a's (lag 0): would be >= 3 s if b still counted
    a.answer = DatabaseUnavailable("gone")
    assert (await router.run(True, lambda db: db.rows(None, {})))[0][0] == "primary"
    assert router.lag_bound() is None


def test_a_replica_is_named_by_host_and_port_never_by_its_credentials():
    assert replica_name(" mysql+pymysql://reader:s3cret@db-replica-2:3307/chat?charset=utf8mb4") == "db-replica-2:3307"
    assert replica_name("mysql+pymysql://reader@db-replica/chat") == "db-replica:3306"
