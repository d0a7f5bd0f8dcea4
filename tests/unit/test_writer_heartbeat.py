"""The writer heartbeat (one format, written and read here) and the hooks the writer wires into its loop."""

from __future__ import annotations

import socket

import pytest

from chat_common.wire.heartbeats import WriterHeartbeat, format_heartbeat, parse_heartbeat
from chat_common.wire.topology import WorkQueue
from chat_common.writing.consumer import LoopState
from chat_common.writing.consumer_hooks import HeartbeatHook, PeriodicChore, Throttle


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("a writer unit test tried to open a connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)


STATE = LoopState("t.chats|abc", WorkQueue("t.chats", (1,)), 7, connection=None)


def test_a_heartbeat_reads_back_what_was_written():
    raw = format_heartbeat(12, 1700000000.1234)
    assert raw == "12:1700000000.123"
    assert parse_heartbeat(raw.encode()) == WriterHeartbeat(12, 1700000000.123)


@pytest.mark.parametrize("raw", [b"", b"garbage", b"x:1.0", b"3:", b"3:soon"])
def test_a_malformed_heartbeat_reads_as_holding_nothing_and_infinitely_old(raw):
    assert parse_heartbeat(raw) == WriterHeartbeat(0, 0.0)


def test_the_heartbeat_hook_reports_what_the_loop_holds_then_waits_its_interval():
    beats = []
    hook = HeartbeatHook(lambda state: beats.append((state.consumer_id, state.held)), (ConnectionError,), every=3600)
    hook.on_iteration(STATE)
    hook.on_iteration(STATE)
    assert beats == [("t.chats|abc", 7)]
    hook.on_stop(STATE)  # a last beat on the way out, whatever the interval
    assert len(beats) == 2


def test_a_heartbeat_redis_refused_is_skipped_not_fatal():
    def down(*_):
        raise ConnectionError("redis down")

    HeartbeatHook(down, (ConnectionError,)).on_iteration(STATE)


def test_the_periodic_chore_runs_every_interval_and_survives_transient_failures():
    runs = []

    def chore():
        runs.append(1)
        raise ConnectionError("search down")

    hook = PeriodicChore(chore, (ConnectionError,), every=3600)
    hook.on_iteration(STATE)
    hook.on_iteration(STATE)
    assert runs == [1]


def test_a_throttle_is_due_at_first_then_once_per_interval():
    now = [100.0]
    throttle = Throttle(2.0, clock=lambda: now[0])
    assert throttle.due() and not throttle.due()
    now[0] = 101.9
    assert not throttle.due()
    now[0] = 102.0
    assert throttle.due()
