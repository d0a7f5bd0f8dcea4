"""Many concurrent clients in several processes: numbers exactly 1..N, every row persisted once."""

from chat_devtools.http import wait_for
from chat_devtools.load.clients import create_concurrently


def test_200_concurrent_chats_then_500_concurrent_messages(private_api, private_db):
    token = private_api.new_application("busy")
    chats = create_concurrently(f"{private_api.base_url}/applications/{token}/chats", "name", 200, prefix="chat")
    assert sorted(c["chat_number"] for c in chats) == list(range(1, 201))

    url = f"{private_api.base_url}/applications/{token}/chats/7/messages"
    messages = create_concurrently(url, "body", 500, prefix="msg")
    assert sorted(m["message_number"] for m in messages) == list(range(1, 501))

    wait_for(
        lambda: (
            private_db.scalar(
                "SELECT COUNT(*) FROM chats c JOIN applications a ON a.id = c.application_id"
                " WHERE a.token_digest = SHA2(:t, 256)",
                t=token,
            )
            == 200
        ),
        timeout=30,
        what="200 chat rows",
    )
    wait_for(lambda: len(private_db.messages_of(token, 7)) == 500, timeout=30, what="500 message rows")
    stored = dict(private_db.messages_of(token, 7))
    assert stored == {m["message_number"]: m["body"] for m in messages}
