"""Search contract over HTTP (the backend-level contract suite is tests/integration/test_search_contract.py)."""

import pytest


@pytest.fixture
def chat_with_messages(api, token):
    chat = api.new_chat(token)
    bodies = [
        "Hello world",
        "yellow submarine",
        "nothing here",
        "HELLO again",
        "مرحبا بالعالم",
        "你好世界",
        "party 🎉 time",
    ]
    numbers = [api.new_message(token, chat, body) for body in bodies]
    # Each one: a message that reached the writer before its chat's row waits in a retry tier, so later
    # messages can be written before earlier ones.
    for number in numbers:
        api.wait_message(token, chat, number)
    return token, chat


def search(api, token, chat, query, **params):
    resp = api.get(f"/applications/{token}/chats/{chat}/messages/search", params={"query": query, **params})
    assert resp.status_code == 200, resp.text
    return [hit["body"] for hit in resp.json()]


def test_fragments_inside_words_case_insensitive(api, chat_with_messages):
    token, chat = chat_with_messages
    assert set(search(api, token, chat, "ell")) == {"Hello world", "yellow submarine", "HELLO again"}
    assert search(api, token, chat, "lo wor") == ["Hello world"]
    assert search(api, token, chat, "بالع") == ["مرحبا بالعالم"]
    assert search(api, token, chat, "好世") == ["你好世界"]
    assert search(api, token, chat, "🎉") == ["party 🎉 time"]
    assert search(api, token, chat, "zzz") == []


def test_wildcards_are_literal(api, chat_with_messages):
    token, chat = chat_with_messages
    assert search(api, token, chat, "%") == []
    assert search(api, token, chat, "_") == []


def test_query_errors(api, chat_with_messages):
    token, chat = chat_with_messages
    base = f"/applications/{token}/chats/{chat}/messages/search"
    assert api.get(base).status_code == 400
    assert api.get(base, params={"query": "  "}).status_code == 400
    assert api.get(base, params={"query": "x" * 201}).status_code == 400
    assert api.get(f"/applications/{token}/chats/99/messages/search", params={"query": "a"}).status_code == 404
    assert api.get("/applications/nope/chats/1/messages/search", params={"query": "a"}).status_code == 404


def test_search_is_paginated(api, chat_with_messages):
    token, chat = chat_with_messages
    first = api.get(f"/applications/{token}/chats/{chat}/messages/search", params={"query": "l", "per_page": 2})
    assert len(first.json()) == 2 and "next" in first.links
