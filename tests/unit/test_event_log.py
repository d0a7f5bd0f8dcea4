"""The event log's rules on fakes: a page's cursor, 410, and the route's answers."""

from __future__ import annotations

import datetime

import pytest
from falcon import testing

from chat_api.app import create_app
from chat_api.model import Chat, Event, EventScan, Message
from chat_api.use_cases.events import expired, page_of
from chat_common.config import Settings
from tests.unit.fakes import build

AT = datetime.datetime(2026, 12, 7, 19, 0, 0, 123456, tzinfo=datetime.UTC)


def event(position: int, message_number: int = 1, version: int = 0, current: int = 0) -> Event:
    kind = "message.created" if version == 0 else "message.updated"
    return Event(position, kind, 1, message_number, version, AT, Message(message_number, "hi"), current)


def scan(positions, head, full=False, oldest=1) -> EventScan:
    return EventScan([event(p) for p in positions], full, oldest, head)


# -- the cursor -------------------------------------------------------------------------------------------------------
def test_a_partial_page_moves_the_cursor_to_the_head_the_read_saw():
    page = page_of(scan([3, 5], head=9), after=2)
    assert [e.position for e in page.events] == [3, 5] and page.next == 9 and not page.has_more
    quiet = page_of(scan([], head=40), after=2)  # a quiet application keeps up with the log
    assert quiet.events == [] and quiet.next == 40 and not quiet.has_more


def test_a_full_page_continues_after_its_last_event():
    page = page_of(scan([3, 4], head=90, full=True), after=2)
    assert page.next == 4 and page.has_more


def test_the_cursor_never_moves_backwards():
    assert page_of(scan([], head=5), after=7).next == 7  # a head behind the cursor (a lagging replica)


def test_a_cursor_is_expired_only_when_events_after_it_were_pruned():
    assert expired(5, 7) and not expired(6, 7) and not expired(9, 7) and not expired(5, None)


def test_an_event_shows_the_row_as_it_is_now_and_says_when_it_was_superseded():
    shape = event(12, version=0, current=1_700_000_000_000_000).public()
    assert shape == {
        "id": "12",
        "type": "message.created",
        "chat_number": 1,
        "message_number": 1,
        "version": 0,
        "committed_at": "2026-12-07T19:00:00.123456Z",
        "superseded": True,
        "resource": {"message_number": 1, "body": "hi"},
    }
    chat = Event(3, "chat.created", 4, 0, 0, AT, Chat(4, "room", 2), 0).public()
    assert "message_number" not in chat and chat["resource"] == {"chat_number": 4, "name": "room", "messages_count": 2}
    assert chat["superseded"] is False


# -- the route ----------------------------------------------------------------------------------------------------
@pytest.fixture
def http():
    service, world = build()
    app = create_app(service, Settings(), {}, lifecycle=None)
    return testing.TestClient(app), world


def test_the_route_answers_a_page_with_its_cursor_in_both_token_forms(http):
    client, world = http
    token = world.application().token
    world.events.answer = scan([3, 5], head=9)
    for path, headers in (
        (f"/applications/{token}/events", {}),
        ("/application/events", {"Authorization": f"Bearer {token}"}),
    ):
        resp = client.simulate_get(path, params={"after": "2", "limit": "5"}, headers=headers)
        assert resp.status_code == 200, resp.text
        assert [e["id"] for e in resp.json["events"]] == ["3", "5"]
        assert resp.json["next"] == "9" and resp.json["has_more"] is False
        assert "after=9&limit=5" in resp.headers["Link"]
    assert [call[1:3] for call in world.events.calls] == [(2, 5), (2, 5)]


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ({"after": "x"}, "after"),
        ({"after": "01"}, "after"),
        ({"after": "-1"}, "after"),
        ({"after": "99999999999999999999"}, "after"),
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "ten"}, "limit"),
    ],
)
def test_a_bad_cursor_or_limit_is_400_json(http, query, param):
    client, world = http
    resp = client.simulate_get(f"/applications/{world.application().token}/events", params=query)
    assert resp.status_code == 400 and param in resp.json["error"]


def test_a_pruned_cursor_is_410_json(http):
    client, world = http
    token = world.application().token
    world.events.answer = scan([40], head=41, oldest=30)
    gone = client.simulate_get(f"/applications/{token}/events", params={"after": "7"})
    assert gone.status_code == 410 and "retention" in gone.json["error"]
    assert client.simulate_get(f"/applications/{token}/events").status_code == 200  # no cursor: the oldest kept


def test_an_unknown_token_is_404_and_a_suspended_one_403(http):
    client, world = http
    assert client.simulate_get("/applications/" + "A" * 43 + "/events").status_code == 404
    app = world.application()
    world.applications.set_suspended(app.id, True)
    assert client.simulate_get(f"/applications/{app.token}/events").status_code == 403
