"""Queue message contracts: round trips and strict rejection of anything a writer could not apply."""

import pytest

from chat_common.wire.contracts import ChatUpsert, ContractError, MessageUpsert


def test_round_trip():
    message = MessageUpsert(3, 4, 5, "héllo 🎉", version=17)
    assert MessageUpsert.decode(message.encode()) == message
    chat = ChatUpsert(1, 2, "room")
    assert ChatUpsert.decode(chat.encode()) == chat


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"null",
        b"[]",
        b"{}",
        b'{"v": 2}',
        b"\xff",
        b'{"v":1,"application_id":true,"chat_number":1,"name":"x"}',
        b'{"v":1,"application_id":0,"chat_number":1,"name":"x"}',
        b'{"v":1,"application_id":1,"chat_number":1,"name":" "}',
        b'{"v":1,"application_id":1,"chat_number":4294967296,"name":"x"}',
        b'{"v":1,"application_id":1,"chat_number":1,"name":"x","version":-1}',
    ],
)
def test_invalid_chat_payloads(raw):
    with pytest.raises(ContractError):
        ChatUpsert.decode(raw)


def test_body_limit_is_enforced_by_the_contract():
    with pytest.raises(ContractError):
        MessageUpsert.decode(MessageUpsert(1, 1, 1, "x" * 11).encode(), max_body_chars=10)
