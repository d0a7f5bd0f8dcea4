"""The event log over HTTP: ``GET /applications/{token}/events`` (and ``/application/events``) follows a tenant's
creates and edits in commit order with a cursor, and shows nothing of another tenant's.

Writers record an event when its queued copy is applied, a moment after the request's answer, so the tests read
until the expected events are there; once committed, an event is readable at once (ids are committed in order,
without gaps). Ordering under concurrent writers, rollbacks and pruning (410) are checked against the database in
``tests/integration/test_event_log.py``.
"""

from __future__ import annotations

from chat_devtools.http import Api, wait_for

APPLIED = 30  # seconds: the writers apply a queued change well within this


def read_all(api: Api, path: str, headers: dict | None = None, after: str | None = None, limit: int = 2):
    """Every event readable now, following ``next`` page by page: (events, last cursor, pages read)."""
    events, pages = [], 0
    while True:
        params = {"limit": limit} if after is None else {"after": after, "limit": limit}
        resp = api.get(path, params=params, headers=headers or {})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        events += body["events"]
        after, pages = body["next"], pages + 1
        if not body["has_more"]:
            return events, after, pages


def read_when(api: Api, path: str, count: int):
    """``read_all`` once it finds ``count`` events (waiting for the writers to apply the changes)."""

    def probe():
        found = read_all(api, path)
        return found if len(found[0]) == count else None

    return wait_for(probe, APPLIED, 0.2, f"{count} events")


def kinds(events: list[dict]) -> list[tuple]:
    return [(e["type"], e["chat_number"], e.get("message_number")) for e in events]


def test_the_log_follows_creates_and_edits_in_order_in_both_token_forms(api: Api, token: str):
    chat = api.new_chat(token, "room")
    api.wait_chat(token, chat)
    numbers = [api.new_message(token, chat, f"m{i}") for i in (1, 2, 3)]
    for number in numbers:
        api.wait_message(token, chat, number)
    assert api.patch(f"/applications/{token}/chats/{chat}/messages/2", json={"body": "edited"}).ok
    assert api.patch(f"/applications/{token}/chats/{chat}", json={"name": "renamed"}).ok
    path = f"/applications/{token}/events"
    events, cursor, pages = read_when(api, path, 6)
    creates = [("chat.created", chat, None), *(("message.created", chat, n) for n in numbers)]
    assert kinds(events[:4]) == creates
    assert sorted(kinds(events[4:])) == [("chat.updated", chat, None), ("message.updated", chat, 2)]
    assert pages >= 3  # two per page
    by_kind = {(e["type"], e.get("message_number")): e for e in events}
    created_2 = by_kind[("message.created", 2)]
    assert created_2["superseded"] is True and created_2["resource"] == {"message_number": 2, "body": "edited"}
    assert by_kind[("message.updated", 2)]["superseded"] is False and by_kind[("message.updated", 2)]["version"] > 0
    assert by_kind[("chat.created", None)]["resource"]["name"] == "renamed"
    assert len({e["id"] for e in events}) == 6
    # The header form reads the same log; after the last cursor there is nothing new.
    header = {"Authorization": f"Bearer {token}"}
    assert read_all(api, "/application/events", header)[0] == events
    tail = api.get(path, params={"after": cursor}).json()
    assert tail["events"] == [] and int(tail["next"]) >= int(cursor)
    # From the middle: the events after the second one.
    assert read_all(api, path, after=events[1]["id"])[0] == events[2:]


def test_another_tenant_sees_nothing_of_this_one(api: Api, token: str):
    chat = api.new_chat(token, "mine")
    number = api.new_message(token, chat, "private")
    api.wait_message(token, chat, number)
    path = f"/applications/{token}/events"
    # The message is readable, so its transaction (which recorded its event) committed: no wait for the log.
    mine = read_all(api, path)[0]
    assert kinds(mine) == [("chat.created", chat, None), ("message.created", chat, number)]
    other = api.new_application("other tenant")
    theirs, _, _ = read_all(api, f"/applications/{other}/events")
    assert theirs == []
    # This tenant's cursor in the other tenant's hands: still only the other tenant's (no) events.
    assert api.get(f"/applications/{other}/events", params={"after": "0"}).json()["events"] == []
    resp = api.get(f"/applications/{other}/events", params={"after": str(int(mine[0]["id"]) - 1)})
    assert resp.status_code in (200, 410) and all(e["chat_number"] != chat for e in resp.json().get("events", []))


def test_bad_cursors_and_limits_are_400_json(api: Api, token: str):
    for params in ({"after": "abc"}, {"after": "-1"}, {"after": "007"}, {"limit": "0"}, {"limit": "1000"}):
        resp = api.get(f"/applications/{token}/events", params=params)
        assert resp.status_code == 400 and "error" in resp.json(), (params, resp.text)
    assert api.get("/application/events").status_code == 401
