"""The header form of every tenant route: ``/application/...`` with ``Authorization: Bearer <token>``.

The token is then in no path, so no proxy, access log or browser history in front sees it; the path form
(``/applications/{token}/...``) keeps working. Both forms are one tenant: the same application, chats and messages,
the same rules (403 when suspended, 429 over the rate). A missing or malformed ``Authorization``, or a token that names
no application, is 401 with a ``WWW-Authenticate: Bearer`` challenge (the path form answers 404 for the latter).
"""

from __future__ import annotations

import time

import pytest

from chat_devtools.http import Api


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def world(api: Api, token: str) -> tuple[str, int, int]:
    """A tenant with one chat and one message, both written."""
    chat = api.new_chat(token, "room")
    api.wait_chat(token, chat)
    number = api.new_message(token, chat, "hello header")
    api.wait_message(token, chat, number)
    return token, chat, number


def test_the_application_in_the_header_form(api: Api, token: str):
    shown = api.get("/application", headers=bearer(token))
    assert shown.status_code == 200, shown.text
    assert shown.json()["token"] == token
    renamed = api.patch("/application", json={"name": "via header"}, headers=bearer(token))
    assert renamed.status_code == 200 and renamed.json()["name"] == "via header"
    put = api.put("/application", json={"name": "put via header"}, headers=bearer(token))
    assert put.status_code == 200
    assert api.get(f"/applications/{token}").json()["name"] == "put via header"  # one tenant, either form


def test_chats_in_the_header_form(api: Api, token: str):
    created = api.post("/application/chats", json={"name": "general"}, headers=bearer(token))
    assert created.status_code == 201, created.text
    chat = created.json()["chat_number"]
    api.wait_chat(token, chat)
    assert api.get(f"/application/chats/{chat}", headers=bearer(token)).json()["name"] == "general"
    listed = api.get("/application/chats?per_page=1", headers=bearer(token))
    assert listed.status_code == 200 and [c["chat_number"] for c in listed.json()] == [chat]
    assert "/application/chats?" in listed.headers["Link"]  # page links stay in the header form
    assert token not in listed.headers["Link"]
    renamed = api.patch(f"/application/chats/{chat}", json={"name": "renamed"}, headers=bearer(token))
    assert renamed.status_code in (200, 202)
    put = api.put(f"/application/chats/{chat}", json={"name": "put"}, headers=bearer(token))
    assert put.status_code in (200, 202)
    assert api.get(f"/applications/{token}/chats/{chat}").json()["name"] == "put"


def test_messages_search_and_stream_in_the_header_form(api: Api, world):
    token, chat, number = world
    base = f"/application/chats/{chat}/messages"
    created = api.post(base, json={"body": "second over header"}, headers=bearer(token))
    assert created.status_code == 201, created.text
    second = created.json()["message_number"]
    api.wait_message(token, chat, second)
    assert api.get(f"{base}/{number}", headers=bearer(token)).json()["body"] == "hello header"
    assert [m["message_number"] for m in api.get(base, headers=bearer(token)).json()] == [number, second]
    edited = api.patch(f"{base}/{number}", json={"body": "edited over header"}, headers=bearer(token))
    assert edited.status_code in (200, 202)
    put = api.put(f"{base}/{second}", json={"body": "put over header"}, headers=bearer(token))
    assert put.status_code in (200, 202)
    deadline = time.monotonic() + 15
    while True:
        found = api.get(f"{base}/search", params={"query": "over header"}, headers=bearer(token))
        assert found.status_code == 200, found.text
        if {m["message_number"] for m in found.json()} == {number, second}:
            break
        assert time.monotonic() < deadline, found.json()
        time.sleep(0.3)
    with api.get(f"{base}/stream", params={"after": 0}, headers=bearer(token), stream=True, timeout=10) as stream:
        assert stream.status_code == 200
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        seen = b""
        for chunk in stream.iter_content(chunk_size=None):
            seen += chunk
            if b"id: " + str(second).encode() in seen:
                break
        assert b"event: message" in seen


def test_an_unknown_token_in_the_header_is_a_bad_credential(api: Api, token: str):
    unknown = api.get("/application/chats", headers=bearer("A" * 32))
    assert unknown.status_code == 401  # RFC 6750 invalid_token; the path form answers 404
    assert 'error="invalid_token"' in unknown.headers["WWW-Authenticate"]
    assert api.get("/applications/" + "A" * 32 + "/chats").status_code == 404
    chat = api.post("/application/chats", json={"name": "c"}, headers=bearer(token)).json()["chat_number"]
    missing = api.get(f"/application/chats/{chat + 1000}", headers=bearer(token))
    assert missing.status_code == 404  # a chat that does not exist stays 404


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer"}, {"Authorization": "Bearer a b"}],
    ids=["missing", "basic", "empty", "two-words"],
)
def test_a_missing_or_malformed_header_is_401(api: Api, headers: dict[str, str]):
    refused = api.get("/application/chats", headers=headers)
    assert refused.status_code == 401, refused.text
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert refused.headers["Content-Type"].startswith("application/json")


def test_a_badly_shaped_header_token_is_401(api: Api):
    refused = api.get("/application/chats", headers=bearer("not/a/token!"))
    assert refused.status_code == 401
    assert "invalid_token" in refused.headers["WWW-Authenticate"]
