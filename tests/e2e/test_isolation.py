"""One application's token never reaches another application's chats or messages."""


def test_tokens_only_see_their_own_chats(api):
    alice, bob = api.new_application("alice"), api.new_application("bob")
    chat = api.new_chat(alice, "alice-only")
    number = api.new_message(alice, chat, "secret of alice")
    api.wait_message(alice, chat, number)
    # Bob has no chat 1: every path through Bob's token must be 404, never Alice's data.
    assert api.get(f"/applications/{bob}/chats/{chat}").status_code == 404
    assert api.get(f"/applications/{bob}/chats/{chat}/messages").status_code == 404
    assert api.get(f"/applications/{bob}/chats/{chat}/messages/{number}").status_code == 404
    assert api.get(f"/applications/{bob}/chats/{chat}/messages/search", params={"query": "secret"}).status_code == 404
    assert api.patch(f"/applications/{bob}/chats/{chat}/messages/{number}", json={"body": "x"}).status_code == 404
    assert api.post(f"/applications/{bob}/chats/{chat}/messages", json={"body": "x"}).status_code == 404
    assert api.get(f"/applications/{bob}/chats").json() == []
    # Bob's own chat 1 is Bob's.
    bobs = api.new_chat(bob, "bob-room")
    assert bobs == 1
    assert api.wait_chat(bob, 1)["name"] == "bob-room"
    assert api.get(f"/applications/{alice}/chats/1").json()["name"] == "alice-only"


def test_token_lookup_is_case_sensitive(api):
    token = api.new_application("case")
    flipped = token.swapcase()
    if flipped != token:
        assert api.get(f"/applications/{flipped}").status_code == 404
