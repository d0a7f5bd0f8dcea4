"""Tenant rules reach open live streams: a suspension, and a rotated-away token past its grace period, end them.

A system of its own with two API workers (``GUNICORN_WORKERS=2``, ``TENANT_CACHE_SECONDS=2``). Streams are held on
both workers (psutil tells which worker holds each socket), then the tenant is suspended through the admin REST
endpoint (it lands on one worker; the other learns it from MySQL once its directory entry is older than the bound).
Every stream of the tenant must get ``event: error`` ``{"error": "application suspended"}`` and a clean end within
the directory's bound + the hub's check period (``TENANT_CHECK_SECONDS``) + slack; a reconnect answers 403, a
bystander tenant's stream is untouched, and after a resume a stream opens and carries messages again. The same for
a rotated-away token whose grace period ends (404).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import psutil
import pytest

from chat_api.streams.hub import TENANT_CHECK_SECONDS
from chat_devtools.http import Api
from chat_devtools.namespace import Namespace
from chat_devtools.processes import System
from chat_devtools.sse import Listener, stream_url
from tests.conftest import LOG_ROOT

BOUND = 2.0  # TENANT_CACHE_SECONDS of this system
SLACK = 1.5  # scheduling on 2 shared cores, the listeners' polling
WITHIN = BOUND + TENANT_CHECK_SECONDS + SLACK


@pytest.fixture(scope="module")
def two_workers() -> Iterator[tuple[System, Api]]:
    ns = Namespace.create("sttenant")
    env = {"TENANT_CACHE_SECONDS": str(BOUND), "STREAM_HEARTBEAT_SECONDS": "1"}
    system = System(ns, LOG_ROOT / ns.name, api_workers=2, extra_env=env).start()
    deadline = time.monotonic() + 60
    while system.api.log_path.read_text().count("Application startup complete") < 2:
        assert time.monotonic() < deadline, "the second worker did not start"
        time.sleep(0.1)
    yield system, Api(system.base_url)
    system.stop()
    ns.destroy()


def worker_of(system: System, listener: Listener) -> int | None:
    """The API worker (pid) holding the other end of a listener's socket."""
    port = listener._sock.getsockname()[1]
    for worker in psutil.Process(system.api.pid).children():
        for conn in worker.net_connections("tcp"):
            if conn.raddr and conn.raddr.port == port:
                return worker.pid
    return None


def streams_on_both_workers(system: System, api: Api, token: str, chat: int) -> list[Listener]:
    """Open streams until both workers hold at least one (the kernel spreads accepts; usually a few suffice)."""
    listeners: list[Listener] = []
    for _ in range(24):
        listener = Listener(stream_url(api.base_url, token, chat)).start()
        assert listener.status == 200, listener.status
        listeners.append(listener)
        if len(listeners) >= 4 and len({worker_of(system, s) for s in listeners} - {None}) == 2:
            return listeners
    for listener in listeners:
        listener.close()
    pytest.fail("could not hold streams on both API workers")


def wait_ended(listeners: list[Listener], started: float, limit: float) -> float:
    """Until every listener's stream ended; the time the slowest took."""
    for listener in listeners:
        listener.done.wait(max(limit - (time.monotonic() - started), 0.0))
    took = time.monotonic() - started
    still = [i for i, s in enumerate(listeners) if not s.done.is_set()]
    assert not still, f"streams {still} still open {took:.1f} s after the change"
    return took


def reconnect(api: Api, token: str, chat: int) -> Listener:
    listener = Listener(stream_url(api.base_url, token, chat)).start()
    listener.done.wait(5)
    return listener


def test_suspension_ends_open_streams_on_every_worker_and_resume_restores(two_workers):
    system, api = two_workers
    token, bystander = api.new_application("streamed"), api.new_application("bystander")
    chat, other_chat = api.new_chat(token), api.new_chat(bystander)
    api.wait_chat(token, chat)
    api.wait_chat(bystander, other_chat)
    listeners = streams_on_both_workers(system, api, token, chat)
    other = Listener(stream_url(api.base_url, bystander, other_chat)).start()
    try:
        time.sleep(BOUND + 0.2)  # both workers' directory entries are now older than their last check
        started = time.monotonic()
        answer = api.post(f"/applications/{token}/suspend")
        assert answer.status_code == 200 and answer.json()["state"] == "suspended"
        took = wait_ended(listeners, started, WITHIN)
        assert took <= WITHIN
        for listener in listeners:
            assert listener.ended == "clean"  # a finished response, not a cut connection: do not resume blindly
            last = listener.events[-1]
            assert (last.event, last.data) == ("error", {"error": "application suspended"})

        refused = reconnect(api, token, chat)
        assert refused.status == 403 and refused.body and b"application suspended" in refused.body
        assert not other.done.is_set()  # another tenant's stream is untouched...
        assert api.new_message(bystander, other_chat, "still here") == 1
        other.wait_numbers([1])  # ...and still live

        started = time.monotonic()
        assert api.post(f"/applications/{token}/resume").json()["state"] == "active"
        while True:
            resumed = Listener(stream_url(api.base_url, token, chat)).start()
            if resumed.status == 200:
                break
            resumed.close()
            assert time.monotonic() - started < BOUND + SLACK, f"still {resumed.status} after the resume"
            time.sleep(0.1)
        try:
            assert api.new_message(token, chat, "back") == 1
            resumed.wait_numbers([1])
            time.sleep(TENANT_CHECK_SECONDS + 0.5)  # a resumed tenant's stream survives the next checks
            assert not resumed.done.is_set()
        finally:
            resumed.close()
    finally:
        for listener in [*listeners, other]:
            listener.close()


def test_a_rotated_away_token_s_streams_end_when_its_grace_period_ends(two_workers):
    system, api = two_workers
    old, chat = api.new_tenant_with_chat("rotated")
    listeners = streams_on_both_workers(system, api, old, chat)
    grace = 3
    try:
        answer = api.post(f"/applications/{old}/rotate-token", json={"grace_seconds": grace})
        assert answer.status_code == 200, answer.text
        rotated_at = time.monotonic()
        new = answer.json()["token"]
        fresh = Listener(stream_url(api.base_url, new, chat)).start()
        assert fresh.status == 200
        assert api.new_message(new, chat, "during grace") == 1
        for listener in [*listeners, fresh]:
            listener.wait_numbers([1])  # the old token's streams live on through the grace period
        assert not any(s.done.is_set() for s in listeners)
        took = wait_ended(listeners, rotated_at, grace + WITHIN)
        assert took >= grace - 0.5  # not before the grace period ended
        for listener in listeners:
            assert listener.ended == "clean"
            last = listener.events[-1]
            assert (last.event, last.data) == ("error", {"error": "application not found"})
        refused = reconnect(api, old, chat)
        assert refused.status == 404
        assert not fresh.done.is_set()  # the new token's stream stays
        fresh.close()
    finally:
        for listener in listeners:
            listener.close()
