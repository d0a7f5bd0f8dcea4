"""The count sync's claim bookkeeping: claim, finish, give back on failure, return a crashed run's stale claims.

The claim and the give-back are Lua scripts run inside Redis; here a fake Redis runs Python stand-ins of those
scripts (same keys and arguments), so what is tested is the Python side's decisions: what it claims, when it
deletes a claim, when it gives one back, which claims it judges stale. The database side (``_recount``) is
replaced by a recorder. The scripts themselves are exercised against real Redis in tests/integration.
"""

from __future__ import annotations

import socket
import time

import pytest
import redis

from chat_common.wire.keys import RedisKeys
from counter_cron import sync
from counter_cron.sync import CountSync

KEYS = RedisKeys("t:")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("a count-claims unit test tried to open a connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def b(value) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


class FakeRedis:
    """Sets, hashes and strings in dicts; ``register_script`` returns Python versions of the sync's scripts."""

    def __init__(self) -> None:
        self.sets: dict[str, set[bytes]] = {}
        self.hashes: dict[str, dict[bytes, bytes]] = {}
        self.strings: dict[str, bytes] = {KEYS.counts_epoch: b"x"}
        self.fail_give_back = False

    def register_script(self, source: str):
        return {sync._CLAIM: self._claim, sync._GIVE_BACK: self._give_back, sync._FINISH_FULL: None}[source]

    def _claim(self, keys, args):
        dirty, claim, claims = keys
        count, name, now = args
        ids = sorted(self.sets.get(dirty, set()))[: int(count)]
        self.sets[dirty] = self.sets.get(dirty, set()) - set(ids)
        if ids:
            self.sets.setdefault(claim, set()).update(ids)
            self.hashes.setdefault(claims, {})[b(name)] = b(now)
        return ids

    def _give_back(self, keys, args):
        if self.fail_give_back:
            raise redis.ConnectionError("redis down")
        dirty, claim, claims = keys
        self.sets.setdefault(dirty, set()).update(self.sets.pop(claim, set()))
        self.hashes.get(claims, {}).pop(b(args[0]), None)
        return 1

    def scard(self, key):
        return len(self.sets.get(key, ()))

    def exists(self, key):
        return int(key in self.strings or bool(self.sets.get(key)))

    def delete(self, *keys):
        for key in keys:
            self.sets.pop(key, None)
            self.strings.pop(key, None)

    def hdel(self, name, *fields):
        for f in fields:
            self.hashes.get(name, {}).pop(b(f), None)

    def hgetall(self, name):
        return dict(self.hashes.get(name, {}))


class RecordingSync(CountSync):
    """A CountSync whose database side only records the ids it was asked to recount."""

    def __init__(self, client, fail_on: int | None = None, on_recount=None, **kwargs) -> None:
        super().__init__(engine=None, client=client, keys=KEYS, **kwargs)
        self.recounted: list[list[int]] = []
        self.fail_on = fail_on
        self.on_recount = on_recount

    def _recount(self, target, ids, report, tenants=None):
        if self.on_recount:
            self.on_recount()
        if self.fail_on in ids:
            raise RuntimeError("database down")
        self.recounted.append(list(ids))


def dirty(client: FakeRedis, key: str, *ids) -> None:
    client.sets.setdefault(key, set()).update(b(i) for i in ids)


def test_a_run_claims_every_dirty_id_in_batches_and_finishes_each_claim():
    client = FakeRedis()
    dirty(client, KEYS.dirty_chats, *range(1, 6))
    dirty(client, KEYS.dirty_applications, 9)
    s = RecordingSync(client, batch_size=2)
    report = s.run()
    assert s.recounted == [[1, 2], [3, 4], [5], [9]]
    assert (report.chats_recounted, report.applications_recounted) == (5, 1)
    assert client.scard(KEYS.dirty_chats) == 0
    assert not client.sets.get(KEYS.count_claim(KEYS.dirty_chats, s.run_id))  # claim deleted after the commit
    assert client.hgetall(KEYS.count_claims) == {}  # and forgotten in the claims hash


def test_ids_marked_while_a_run_drains_are_left_for_the_next_run():
    client = FakeRedis()
    dirty(client, KEYS.dirty_chats, 1, 2)
    marks = iter(range(100, 200))
    s = RecordingSync(client, batch_size=1, on_recount=lambda: dirty(client, KEYS.dirty_chats, next(marks)))
    s.run()
    assert len(s.recounted) == 2  # as many ids as were dirty when the drain began, however fast marks arrive
    assert client.scard(KEYS.dirty_chats) == 2  # the rest wait for the next run


def test_a_failed_batch_is_given_back_to_the_dirty_set_at_once():
    client = FakeRedis()
    dirty(client, KEYS.dirty_chats, 1, 2, 3, 4)
    s = RecordingSync(client, batch_size=2, fail_on=3)
    with pytest.raises(RuntimeError):
        s.run()
    assert s.recounted == [[1, 2]]
    assert client.sets[KEYS.dirty_chats] == {b"3", b"4"}  # the failed batch is dirty again
    assert KEYS.count_claim(KEYS.dirty_chats, s.run_id) not in client.sets
    assert client.hgetall(KEYS.count_claims) == {}


def test_when_redis_fails_too_the_claim_stays_for_a_later_run():
    client = FakeRedis()
    dirty(client, KEYS.dirty_chats, 1)
    client.fail_give_back = True
    s = RecordingSync(client, fail_on=1)
    with pytest.raises(RuntimeError):  # the database error, not the Redis one, is what the caller sees
        s.run()
    claim = KEYS.count_claim(KEYS.dirty_chats, s.run_id)
    assert client.sets[claim] == {b"1"} and b(claim) in client.hgetall(KEYS.count_claims)


def test_stale_claims_of_a_crashed_run_are_returned_and_fresh_ones_left_alone():
    client = FakeRedis()
    crashed = KEYS.count_claim(KEYS.dirty_chats, "crashed")
    running = KEYS.count_claim(KEYS.dirty_applications, "running")
    client.sets[crashed] = {b"7", b"8"}
    client.sets[running] = {b"5"}
    client.hashes[KEYS.count_claims] = {b(crashed): b(time.time() - 301), b(running): b(time.time() - 10)}
    s = RecordingSync(client, stale_claim_seconds=300)
    s.run()
    assert [7, 8] in s.recounted  # given back to dirty:chats, then recounted by this run
    assert client.sets[running] == {b"5"}  # a fresh claim may belong to a live run
    assert list(client.hgetall(KEYS.count_claims)) == [b(running)]


def test_claim_names_lead_back_to_their_dirty_set():
    claim = KEYS.count_claim(KEYS.dirty_applications, "abc")
    assert claim.startswith(KEYS.dirty_applications) and KEYS.claimed_from(claim) == KEYS.dirty_applications


def test_ids_that_are_not_numbers_are_claimed_but_not_recounted():
    client = FakeRedis()
    dirty(client, KEYS.dirty_chats, 4, "junk")
    s = RecordingSync(client)
    assert s.run().chats_recounted == 1
    assert s.recounted == [[4]] and client.scard(KEYS.dirty_chats) == 0
