"""Chats and messages: numbering, asynchronous persistence, reads, edits, pagination, counts."""

import os

import pytest

from chat_devtools.http import wait_for
from tests.e2e.target import behind_release_ingress


def test_chat_numbers_start_at_one_and_rows_appear(api, token):
    assert [api.new_chat(token, f"room {i}") for i in range(3)] == [1, 2, 3]
    chat = api.wait_chat(token, 3)
    assert chat == {"chat_number": 3, "name": "room 2", "messages_count": 0}


def test_create_chat_with_form_body_and_location(api, token):
    resp = api.post(f"/applications/{token}/chats", data={"chat[name]": "form room"})
    assert resp.status_code == 201 and resp.json() == {"chat_number": 1}
    assert resp.headers["Location"].endswith(f"/applications/{token}/chats/1")
    assert api.wait_chat(token, 1)["name"] == "form room"


def test_message_numbers_per_chat(api, token):
    first, second = api.new_chat(token), api.new_chat(token)
    assert [api.new_message(token, first, f"m{i}") for i in range(3)] == [1, 2, 3]
    assert api.new_message(token, second, "other") == 1
    assert api.wait_message(token, first, 3) == {"message_number": 3, "body": "m2"}


def test_a_new_chat_takes_messages_at_once(api, token):
    chat = api.new_chat(token)
    # No wait: the chat row may not be written yet, the message must still be accepted and persisted.
    number = api.new_message(token, chat, "right away")
    assert api.wait_message(token, chat, number)["body"] == "right away"


def test_message_form_body_and_verbatim_text(api, token):
    chat = api.new_chat(token)
    text = "line one\nline two\ttabbed — ünïcødé 🐍 <script>alert(1)</script> ' OR 1=1 --"
    resp = api.post(f"/applications/{token}/chats/{chat}/messages", data={"message[body]": text})
    assert resp.status_code == 201
    assert api.wait_message(token, chat, resp.json()["message_number"])["body"] == text


def test_edit_message_with_patch_and_put(api, token):
    chat = api.new_chat(token)
    number = api.new_message(token, chat, "original")
    api.wait_message(token, chat, number)
    resp = api.patch(f"/applications/{token}/chats/{chat}/messages/{number}", json={"body": "edited"})
    assert resp.status_code == 200 and resp.json() == {"message_number": number, "body": "edited"}
    api.wait_message(token, chat, number, body="edited")
    put = api.put(f"/applications/{token}/chats/{chat}/messages/{number}", data={"body": "put edit"})
    assert put.status_code == 200
    api.wait_message(token, chat, number, body="put edit")


def test_edit_right_after_create_is_not_lost(api, token):
    chat = api.new_chat(token)
    number = api.new_message(token, chat, "first version")
    # The edit may reach the writer before, with or after the create: the newest version must win.
    assert api.patch(f"/applications/{token}/chats/{chat}/messages/{number}", json={"body": "second"}).ok
    api.wait_message(token, chat, number, body="second")


def test_many_edits_end_with_the_last_one(api, token):
    chat = api.new_chat(token)
    number = api.new_message(token, chat, "v0")
    for i in range(1, 21):
        assert api.patch(f"/applications/{token}/chats/{chat}/messages/{number}", json={"body": f"v{i}"}).ok
    api.wait_message(token, chat, number, body="v20")


def test_rename_chat(api, token):
    chat = api.new_chat(token, "before")
    api.wait_chat(token, chat)
    resp = api.patch(f"/applications/{token}/chats/{chat}", json={"name": "after"})
    assert resp.status_code == 200 and resp.json()["name"] == "after"
    wait_for(lambda: api.wait_chat(token, chat)["name"] == "after", what="rename")
    assert api.put(f"/applications/{token}/chats/{chat}", data={"chat[name]": "put"}).status_code == 200
    wait_for(lambda: api.wait_chat(token, chat)["name"] == "put", what="put rename")


def test_list_messages_in_number_order_with_pagination(api, token):
    chat = api.new_chat(token)
    for i in range(1, 8):
        api.new_message(token, chat, f"body {i}")
    # Each one: a message that reached the writer before its chat's row is retried later, so 7 may land before 1.
    for number in range(1, 8):
        api.wait_message(token, chat, number)
    page1 = api.get(f"/applications/{token}/chats/{chat}/messages", params={"per_page": 3})
    assert page1.status_code == 200
    assert [m["message_number"] for m in page1.json()] == [1, 2, 3]
    assert 'rel="next"' in page1.headers["Link"] or "rel=next" in page1.headers["Link"]
    assert "page=2" in page1.links["next"]["url"]
    page3 = api.get(f"/applications/{token}/chats/{chat}/messages", params={"per_page": 3, "page": 3})
    assert [m["message_number"] for m in page3.json()] == [7]
    assert "next" not in page3.links and "prev" in page3.links
    assert api.get(f"/applications/{token}/chats/{chat}/messages", params={"page": 9}).json() == []


def test_list_chats_paginated(api, token):
    for i in range(5):
        api.new_chat(token, f"c{i}")
    api.wait_chat(token, 5)
    resp = api.get(f"/applications/{token}/chats", params={"per_page": 2, "page": 2})
    assert [c["chat_number"] for c in resp.json()] == [3, 4]
    assert set(resp.links) == {"first", "prev", "next"}


def test_counts_after_sync(sync_counts, api, token):
    first, second = api.new_chat(token), api.new_chat(token)
    for _ in range(4):
        api.new_message(token, first)
    api.new_message(token, second)
    api.wait_message(token, first, 4)
    api.wait_message(token, second, 1)

    def counts() -> tuple[int, int, int]:
        return (
            api.get(f"/applications/{token}").json()["chats_count"],
            api.get(f"/applications/{token}/chats/{first}").json()["messages_count"],
            api.get(f"/applications/{token}/chats/{second}").json()["messages_count"],
        )

    sync_counts(lambda: counts() == (2, 4, 1))
    assert counts() == (2, 4, 1)


def test_health_through_the_public_routes(api):
    assert api.get("/healthz").json() == {"status": "ok"}


def test_private_routes_are_not_published_by_the_ingress(api):
    if not behind_release_ingress():
        pytest.skip("no release ingress in front (a local system, or API_BASE_URL without E2E_K8S_NAMESPACE)")
    for path in ("/metrics", "/readyz", "/status", "/docs", "/openapi.json"):
        assert api.get(path).status_code == 404, f"{path} is reachable through the ingress"


def test_readiness_and_metrics(api):
    if os.environ.get("API_BASE_URL"):
        pytest.skip(
            "API_BASE_URL is set: /readyz and /metrics are not published by the ingress (helm test checks /readyz)"
        )
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}
    # The queues' part comes from a snapshot each API worker reads in the background: "unknown" until it lands.
    status = wait_for(lambda: (r := api.get("/status")).json()["checks"]["retry_tiers"] != "unknown" and r, 10, 0.2)
    expected = {
        "database": "ok",
        "redis": "ok",
        "rabbitmq": "ok",
        "numbering": "open",
        "retry_tiers": "ok",
        "dead_letters": "empty",
    }
    assert status.status_code == 200 and status.json()["checks"] == expected
    assert {"retry_tiers", "dead_letters"} <= set(status.json()["details"])
    metrics = api.get("/metrics").text
    assert "chat_api_requests_total" in metrics
    assert 'route="/applications/{token}/chats"' in metrics
