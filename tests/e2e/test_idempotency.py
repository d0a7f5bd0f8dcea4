"""Idempotency-Key on chat and message creates: a retry gets the first number, and the row exists once."""

import uuid

from chat_devtools.http import wait_for


def key() -> str:
    return f"retry-{uuid.uuid4().hex}"


def test_retried_message_create_gets_the_same_number_and_one_row(api, token):
    chat = api.new_chat(token)
    k = key()
    url = f"/applications/{token}/chats/{chat}/messages"
    first = api.post(url, json={"body": "only once"}, headers={"Idempotency-Key": k})
    again = api.post(url, json={"body": "only once"}, headers={"Idempotency-Key": k})
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json() == {"message_number": 1}
    assert "Idempotent-Replayed" not in first.headers and again.headers["Idempotent-Replayed"] == "true"
    other = api.post(url, json={"body": "only once"}, headers={"Idempotency-Key": key()})
    assert other.json() == {"message_number": 2}
    api.wait_message(token, chat, 2)
    listed = api.get(url).json()
    assert [m["message_number"] for m in listed] == [1, 2]


def test_retried_chat_create_gets_the_same_number(api, token):
    k = key()
    first = api.post(f"/applications/{token}/chats", data={"chat[name]": "room"}, headers={"Idempotency-Key": k})
    again = api.post(f"/applications/{token}/chats", data={"chat[name]": "room"}, headers={"Idempotency-Key": k})
    assert first.json() == again.json() == {"chat_number": 1}
    assert api.new_chat(token) == 2
    api.wait_chat(token, 2)
    assert [c["chat_number"] for c in api.get(f"/applications/{token}/chats").json()] == [1, 2]


def test_same_key_for_a_different_request_is_409(api, token):
    chat = api.new_chat(token)
    k = key()
    url = f"/applications/{token}/chats/{chat}/messages"
    assert api.post(url, json={"body": "a"}, headers={"Idempotency-Key": k}).status_code == 201
    resp = api.post(url, json={"body": "b"}, headers={"Idempotency-Key": k})
    assert resp.status_code == 409 and "different request" in resp.json()["error"]


def test_keys_are_scoped_to_their_chat(api, token):
    first, second = api.new_chat(token), api.new_chat(token)
    k = key()
    a = api.post(f"/applications/{token}/chats/{first}/messages", json={"body": "x"}, headers={"Idempotency-Key": k})
    b = api.post(f"/applications/{token}/chats/{second}/messages", json={"body": "x"}, headers={"Idempotency-Key": k})
    assert a.status_code == b.status_code == 201 and "Idempotent-Replayed" not in b.headers
    api.wait_message(token, second, 1)


def test_bad_keys_and_unknown_chats(api, token):
    assert (
        api.post(
            f"/applications/{token}/chats", json={"name": "x"}, headers={"Idempotency-Key": "has space"}
        ).status_code
        == 422
    )
    # A failed create (unknown chat) gives the key back: it is not stuck "in progress".
    k = key()
    url = f"/applications/{token}/chats/77/messages"
    assert api.post(url, json={"body": "x"}, headers={"Idempotency-Key": k}).status_code == 404
    assert api.post(url, json={"body": "x"}, headers={"Idempotency-Key": k}).status_code == 404


def test_replay_is_written_once_even_when_the_first_row_is_already_there(api, token):
    chat = api.new_chat(token)
    k = key()
    url = f"/applications/{token}/chats/{chat}/messages"
    assert api.post(url, json={"body": "landed"}, headers={"Idempotency-Key": k}).status_code == 201
    api.wait_message(token, chat, 1)
    for _ in range(3):
        assert api.post(url, json={"body": "landed"}, headers={"Idempotency-Key": k}).json() == {"message_number": 1}
    marker = api.new_message(token, chat, "marker")
    api.wait_message(token, chat, marker)
    wait_for(lambda: len(api.get(url).json()) == 2, what="exactly two rows")
    assert api.get(url).json() == [{"message_number": 1, "body": "landed"}, {"message_number": 2, "body": "marker"}]
