"""Live message streams against the real processes: gunicorn API (uvicorn workers), both writers, MariaDB, RabbitMQ.

Every client here is a real HTTP client on a socket (chat_devtools.sse.Listener): events in order exactly once,
resume with Last-Event-ID at several points (page boundaries, mid-page, during a burst), edits, tenant isolation,
limits (429 for a tenant's share, 503 for a full process), a slow reader cut off and resuming without loss,
heartbeats, and the clean end on shutdown.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from chat_api.event_loop import BLOCKED_MESSAGE
from chat_devtools.http import Api, wait_for
from chat_devtools.namespace import Namespace
from chat_devtools.processes import System
from chat_devtools.sse import Listener, stream_url
from tests.conftest import LOG_ROOT, own_system

STREAM_ENV = {
    # The event-loop guard (chat_api.event_loop): any loop step longer than this is reported; see the last tests.
    "API_SLOW_CALLBACK_MS": "250",
    "STREAM_HEARTBEAT_SECONDS": "1",
    "STREAM_BUFFER_BYTES": str(64 * 1024),
    "STREAM_MAX_PER_TENANT": "3",
}


@pytest.fixture(scope="module")
def streaming() -> Iterator[tuple[System, Api]]:
    """A system of its own (two API workers) with small stream limits and a fast heartbeat."""
    with own_system("st", api_workers=2, extra_env=STREAM_ENV) as system:
        yield system, Api(system.base_url)


@pytest.fixture
def chat(streaming) -> tuple[Api, str, int]:
    """A fresh application with one written chat."""
    _, api = streaming
    token, number = api.new_tenant_with_chat("streams")
    return api, token, number


def create_many(api: Api, token: str, chat: int, count: int, threads: int = 8, body: str = "m") -> list[int]:
    """``count`` messages created concurrently (so rows may commit out of number order); their numbers."""

    def one(i: int) -> int:
        return api.new_message(token, chat, f"{body}-{i}")

    with ThreadPoolExecutor(threads) as pool:
        return sorted(pool.map(one, range(count)))


def listen(api: Api, token: str, chat: int, after: int | None = None, last_event_id: str | None = None) -> Listener:
    return Listener(stream_url(api.base_url, token, chat, after), last_event_id=last_event_id).start()


def wait_stored(api: Api, token: str, chat: int, number: int) -> None:
    api.wait_message(token, chat, number, timeout=20)


def test_events_arrive_in_order_exactly_once_on_every_worker(chat):
    api, token, number = chat
    listeners = [listen(api, token, number, after=0) for _ in range(3)]  # over both workers, most likely
    try:
        created = create_many(api, token, number, 150)
        assert created == list(range(1, 151))
        for listener in listeners:
            listener.wait_numbers(created, timeout=30)
            assert listener.status == 200
            assert listener.headers["content-type"].startswith("text/event-stream")
            assert listener.headers.get("x-accel-buffering") == "no"
            assert listener.retry_ms == 3000
            first = next(e for e in listener.events if e.event == "message")
            assert first.id == "1" and first.data == api.get(f"/applications/{token}/chats/{number}/messages/1").json()
        time.sleep(1.0)  # nothing more, nothing twice
        assert all(listener.numbers() == created for listener in listeners)
    finally:
        for listener in listeners:
            listener.close()


def test_without_a_position_the_stream_starts_after_the_newest_stored_message(chat):
    api, token, number = chat
    create_many(api, token, number, 3)
    wait_stored(api, token, number, 3)
    listener = listen(api, token, number)
    try:
        assert api.new_message(token, number, "live") == 4
        listener.wait_numbers([4])
        assert listener.events[-1].data == {"message_number": 4, "body": "live"}
    finally:
        listener.close()


@pytest.mark.parametrize("resume_at", [0, 1, 57, 99, 100, 101, 150, 249, 250])
def test_resume_with_last_event_id_replays_then_goes_live_without_seam(streaming, resume_at):
    _, api = streaming
    token, number = api.new_tenant_with_chat("resume")
    create_many(api, token, number, 250)
    wait_stored(api, token, number, 250)
    # An EventSource sends Last-Event-ID on reconnect, with its original URL (here ?after=0): the header wins.
    listener = listen(api, token, number, after=0, last_event_id=str(resume_at))
    try:
        listener.wait_numbers(list(range(resume_at + 1, 251)), timeout=30)
        live = create_many(api, token, number, 5)
        listener.wait_numbers(list(range(resume_at + 1, 251)) + live)
    finally:
        listener.close()


def test_resume_during_a_burst_loses_nothing_and_repeats_nothing(chat):
    api, token, number = chat
    total = 300
    burst = threading.Thread(target=create_many, args=(api, token, number, total, 4))
    first = listen(api, token, number, after=0)
    burst.start()
    try:
        first.wait_until(lambda s: len(s.numbers()) >= 40, what="40 events")
        first.close()  # mid-burst, at whatever point it got to
        seen = first.numbers()
        second = listen(api, token, number, last_event_id=first.last_id)
        second.wait_until(lambda s: len(s.numbers()) >= 120 - len(seen) or s.done.is_set(), what="more")
        second.close()
        seen += second.numbers()
        third = listen(api, token, number, last_event_id=second.last_id)
        burst.join(60)
        third.wait_until(lambda s: len(seen) + len(s.numbers()) >= total, timeout=30, what="the rest")
        time.sleep(0.5)
        seen += third.numbers()
        third.close()
    finally:
        burst.join(60)
    assert seen == list(range(1, total + 1))


def test_edits_arrive_as_edit_events_with_their_version(chat):
    api, token, number = chat
    listener = listen(api, token, number, after=0)
    try:
        message = api.new_message(token, number, "before")
        listener.wait_numbers([message])
        assert api.patch(f"/applications/{token}/chats/{number}/messages/{message}", json={"body": "after"}).ok
        listener.wait_until(lambda s: any(e.event == "edit" for e in s.events), what="the edit")
        edit = next(e for e in listener.events if e.event == "edit")
        assert edit.id is None  # an edit does not move the client's resume point
        assert edit.data["message_number"] == message and edit.data["body"] == "after" and edit.data["version"] > 0
    finally:
        listener.close()


def test_a_chat_of_another_application_is_not_found(chat):
    api, token, number = chat
    other = api.new_application("other")
    assert api.get(f"/applications/{other}/chats/{number}/messages/stream").status_code == 404
    assert api.get(f"/applications/{token}/chats/{number + 999}/messages/stream").status_code == 404
    assert api.get(f"/applications/{'x' * 20}/chats/{number}/messages/stream").status_code == 404
    bad = api.get(f"/applications/{token}/chats/{number}/messages/stream", headers={"Last-Event-ID": "abc"})
    assert bad.status_code == 400 and "Last-Event-ID" in bad.json()["error"]
    assert api.get(f"/applications/{token}/chats/{number}/messages/stream?after=-1").status_code == 400
    # And nothing of another tenant's chat 1 ever reaches this stream.
    other_chat = api.new_chat(other)
    api.wait_chat(other, other_chat)
    listener = listen(api, token, number, after=0)
    try:
        api.new_message(other, other_chat, "not for you")
        mine = api.new_message(token, number, "mine")
        listener.wait_numbers([mine])
        assert [e.data["body"] for e in listener.events] == ["mine"]
    finally:
        listener.close()


def test_per_tenant_limit_answers_429_and_frees_the_slot_on_close(streaming):
    _, api = streaming
    token, number = api.new_tenant_with_chat("limited")
    # The limit is per API process (3 here): with two workers a tenant holds at most 6 streams, one more is refused.
    opened, refused = [], None
    for _ in range(7):
        resp = requests.get(stream_url(api.base_url, token, number), stream=True, timeout=10)
        if resp.status_code == 429:
            refused = resp
            break
        assert resp.status_code == 200
        opened.append(resp)
    try:
        assert refused is not None, f"{len(opened)} streams opened, none refused"
        assert refused.headers["Retry-After"] and "streams per application" in refused.json()["error"]
        assert len(opened) >= 3
        other = api.new_application("unaffected")  # another tenant is not refused
        chat = api.new_chat(other)
        api.wait_chat(other, chat)
        resp = requests.get(stream_url(api.base_url, other, chat), stream=True, timeout=10)
        assert resp.status_code == 200
        resp.close()
    finally:
        for resp in opened:
            resp.close()

    def can_open_again() -> bool:  # closed streams are noticed at the next write (heartbeat: 1 s here)
        resps = [requests.get(stream_url(api.base_url, token, number), stream=True, timeout=10) for _ in range(3)]
        ok = all(r.status_code == 200 for r in resps)
        for r in resps:
            r.close()
        return ok

    wait_for(can_open_again, timeout=15, interval=1, what="the tenant's slots to be freed")


def test_per_process_limit_answers_503_whatever_the_tenant():
    """A full process is a capacity fault (503, Retry-After; another process may have room), not the tenant's
    doing: only a tenant over its own share gets 429 (#23)."""
    namespace = Namespace.create("stl")
    env = {"STREAM_MAX_PER_PROCESS": "2"}
    system = System(namespace, LOG_ROOT / namespace.name, api_workers=1, extra_env=env).start()
    api = Api(system.base_url)
    opened = []
    try:
        for name in ("one", "two", "three"):
            token, chat = api.new_tenant_with_chat(name)
            opened.append(requests.get(stream_url(api.base_url, token, chat), stream=True, timeout=10))
        assert [r.status_code for r in opened] == [200, 200, 503]
        assert "per API process" in opened[2].json()["error"] and opened[2].headers["Retry-After"]
        wait_for(lambda: 'chat_api_stream_refused_total{limit="process"}' in api.get("/metrics").text, 5)
        # A client that goes away frees its slot at once, not at the stream's next heartbeat (15 s here).
        opened[0].close()
        token, chat = api.new_tenant_with_chat("four")

        def fourth_opens() -> bool:
            resp = requests.get(stream_url(api.base_url, token, chat), stream=True, timeout=10)
            opened.append(resp)
            return resp.status_code == 200

        wait_for(fourth_opens, timeout=3, interval=0.2, what="the freed slot")
    finally:
        for resp in opened:
            resp.close()
        system.stop()
        namespace.destroy()


def test_heartbeat_comments_keep_an_idle_stream_alive(chat):
    api, token, number = chat
    listener = listen(api, token, number)
    try:
        listener.wait_until(lambda s: s.comments >= 2, timeout=10, what="two heartbeats")
        assert not listener.done.is_set()
    finally:
        listener.close()


def test_a_slow_reader_is_cut_off_and_resumes_without_loss(chat):
    api, token, number = chat
    stalled = Listener(stream_url(api.base_url, token, number, after=0), read=False).start()
    body = "x" * 8000
    created = create_many(api, token, number, 80, body=body)  # ~640 KB: far more than 64 KiB of buffer
    wait_stored(api, token, number, created[-1])
    # The server gives up on it: its connection ends without the response's terminating chunk.
    stalled_events = _drain(stalled)
    assert stalled.ended == "reset", stalled.ended
    received = [e.data["message_number"] for e in stalled_events if e.event == "message"]
    assert received == list(range(1, len(received) + 1)) and len(received) < len(created)
    resumed = listen(api, token, number, last_event_id=str(received[-1]) if received else "0")
    try:
        resumed.wait_numbers([n for n in created if n > (received[-1] if received else 0)], timeout=30)
    finally:
        resumed.close()
    wait_for(  # buffered metrics: written within a second
        lambda: 'chat_api_stream_closed_total{reason="slow"}' in api.get("/metrics").text, 5, what="the metric"
    )


def _drain(stalled: Listener, timeout: float = 20) -> list:
    """Read what a stalled client's socket still holds, until the server's end of the connection."""
    stalled._sock.settimeout(timeout)
    stalled._head_read.clear()
    thread = threading.Thread(target=stalled._run, daemon=True)
    thread.start()
    thread.join(timeout + 5)
    return stalled.events


def test_metrics_count_streams_events_and_lag(chat):
    api, token, number = chat
    listener = listen(api, token, number, after=0)
    try:
        create_many(api, token, number, 5)
        listener.wait_numbers([1, 2, 3, 4, 5])
        time.sleep(1.2)  # buffered metrics are written once a second
        text = api.get("/metrics").text
        for name in ("chat_api_streams_open", "chat_api_stream_events_total", "chat_api_stream_lag_seconds_count"):
            assert name in text, name
    finally:
        listener.close()


def test_no_stream_work_blocked_the_event_loop(streaming):
    """Replays, fan-out, gaps, heartbeats and cut-offs above all ran with asyncio's slow-step report on.

    A report names the task and what it waits on next (a future created in chat_api/streams for a stream's body,
    the ticker or the announcement consumer): those are the steps of stream code. Other routes are the business
    of tests/integration/test_event_loop.py (a first request of a process may be slow on a loaded machine).
    """
    system, _ = streaming
    log = system.api.log_path.read_text()
    assert "event-loop guard on" in log
    stream_code = ("chat_api/streams/", "stream-ticker", "stream-announcements")
    reports = [line for line in log.splitlines() if BLOCKED_MESSAGE in line and any(s in line for s in stream_code)]
    assert reports == [], "\n".join(reports)


def test_clean_end_on_shutdown_then_resume_on_the_next_process(chat, streaming):
    system, _ = streaming
    api, token, number = chat
    create_many(api, token, number, 5)
    listener = listen(api, token, number, after=0)
    listener.wait_numbers([1, 2, 3, 4, 5])
    started = time.monotonic()
    system.api.stop()  # SIGTERM: gunicorn's graceful stop
    assert listener.done.wait(10), "the stream did not end on shutdown"
    assert listener.ended == "clean"
    assert time.monotonic() - started < 10
    system.api.start()
    system.wait_ready()
    resumed = listen(api, token, number, last_event_id=listener.last_id)
    try:
        more = create_many(api, token, number, 3)
        resumed.wait_numbers(more)
    finally:
        resumed.close()
