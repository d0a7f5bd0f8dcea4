"""Queue message contracts between the API (producer) and the writers (consumers).

Each message is one versioned upsert: creates carry version 0, edits the Redis clock's microseconds, and a
writer applies a row only when its version is newer than what is stored — so redelivery, retries and
out-of-order delivery can never duplicate a row or let an old edit win. A create sent with an
``Idempotency-Key`` carries the key and the request's fingerprint, which the writer stores beside the row.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from chat_common.validation import BODY_MAX_CHARS, MAX_NUMBER, NAME_MAX_CHARS
from chat_common.wire.idempotency import valid_idempotency_key

SCHEMA_VERSION = 1
MAX_VERSION = 2**63 - 1
MAX_ID = 2**64 - 1


class ContractError(ValueError):
    """A queue message that no writer can ever apply (it goes to the dead-letter queue)."""


def _int_field(data: dict, name: str, low: int, high: int) -> int:
    value = data.get(name)
    if type(value) is not int or not low <= value <= high:
        raise ContractError(f"{name} must be an integer in [{low}, {high}]")
    return value


def _text_field(data: dict, name: str, max_chars: int) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value.strip() or len(value) > max_chars:
        raise ContractError(f"{name} must be a non-blank string of at most {max_chars} characters")
    return value


def _key_fields(data: dict) -> dict:
    """The optional idempotency key and fingerprint of a create (both or neither)."""
    key, digest = data.get("idempotency_key"), data.get("fingerprint")
    if key is None and digest is None:
        return {}
    if not (isinstance(key, str) and valid_idempotency_key(key)):
        raise ContractError("idempotency_key must be 1-128 printable ASCII characters")
    if not (isinstance(digest, str) and len(digest) == 32 and all(c in "0123456789abcdef" for c in digest)):
        raise ContractError("fingerprint must be 32 lower-case hex digits")
    return {"idempotency_key": key, "fingerprint": digest}


def _address_fields(data: dict) -> dict:
    """The application and chat every upsert is addressed to."""
    return {
        "application_id": _int_field(data, "application_id", 1, MAX_ID),
        "chat_number": _int_field(data, "chat_number", 1, MAX_NUMBER),
    }


def _version_fields(data: dict) -> dict:
    """The version every upsert carries, and a create's optional idempotency key and fingerprint."""
    return {"version": _int_field(data, "version", 0, MAX_VERSION), **_key_fields(data)}


class _Contract:
    """What every queue message has: its serialisation."""

    __slots__ = ()

    def encode(self) -> bytes:
        """Serialise for the wire, leaving out optional fields that are not set (``dataclasses.asdict`` deep-copies:
        slow)."""
        data = {"v": SCHEMA_VERSION}
        for name in self.__slots__:
            value = getattr(self, name)
            if value is not None:
                data[name] = value
        return orjson.dumps(data)


def _decode(raw: bytes) -> dict:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ContractError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("v") != SCHEMA_VERSION:
        raise ContractError(f"not a v{SCHEMA_VERSION} message object")
    return data


@dataclass(frozen=True, slots=True)
class ChatUpsert(_Contract):
    """Create (version 0) or rename a chat."""

    application_id: int
    chat_number: int
    name: str
    version: int = 0
    idempotency_key: str | None = None
    fingerprint: str | None = None

    @classmethod
    def decode(cls, raw: bytes, max_name_chars: int = NAME_MAX_CHARS) -> ChatUpsert:
        """Parse and validate; raises :class:`ContractError` for anything malformed."""
        data = _decode(raw)
        return cls(**_address_fields(data), name=_text_field(data, "name", max_name_chars), **_version_fields(data))


@dataclass(frozen=True, slots=True)
class MessageUpsert(_Contract):
    """Create (version 0) or edit a message."""

    application_id: int
    chat_number: int
    message_number: int
    body: str
    version: int = 0
    idempotency_key: str | None = None
    fingerprint: str | None = None

    @classmethod
    def decode(cls, raw: bytes, max_body_chars: int = BODY_MAX_CHARS) -> MessageUpsert:
        """Parse and validate; raises :class:`ContractError` for anything malformed."""
        data = _decode(raw)
        return cls(
            **_address_fields(data),
            message_number=_int_field(data, "message_number", 1, MAX_NUMBER),
            body=_text_field(data, "body", max_body_chars),
            **_version_fields(data),
        )
