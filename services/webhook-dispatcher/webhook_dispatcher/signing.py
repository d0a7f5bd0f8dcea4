"""Standard Webhooks signatures (https://www.standardwebhooks.com): what a receiver verifies a delivery with.

A secret is ``whsec_`` followed by the base64 of 24 to 64 random bytes; the HMAC key is those bytes. Each delivery
carries three headers:

- ``webhook-id``: the message id, ``evt_<event id>``, the same on every redelivery (receivers deduplicate by it);
- ``webhook-timestamp``: when this attempt was signed, in Unix seconds (receivers refuse old ones against replays);
- ``webhook-signature``: ``v1,<base64 of HMAC-SHA256(key, f"{id}.{timestamp}.{body}")>``; while a rotated-out secret
  is still valid (``previous_secret_expires_at`` in the future) a second signature with it follows, separated by a
  space, so a receiver holding either secret verifies.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Iterable

SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES, MAX_SECRET_BYTES = 24, 64


def new_secret(size: int = 32) -> str:
    """A fresh signing secret (``whsec_`` + base64 of ``size`` random bytes)."""
    if not MIN_SECRET_BYTES <= size <= MAX_SECRET_BYTES:
        raise ValueError(f"a secret has {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes")
    return SECRET_PREFIX + base64.b64encode(os.urandom(size)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret; :class:`ValueError` if it is not one."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a webhook secret starts with whsec_")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except binascii.Error:
        raise ValueError("a webhook secret is whsec_ and base64") from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ValueError(f"a webhook secret has {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes")
    return key


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64>`` signature of ``body`` for this message id and timestamp."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signed_headers(secrets: Iterable[str], message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers, signed with every secret given (the current one first)."""
    signatures = " ".join(signature(secret, message_id, timestamp, body) for secret in secrets)
    if not signatures:
        raise ValueError("a delivery needs at least one secret")
    return {"webhook-id": message_id, "webhook-timestamp": str(timestamp), "webhook-signature": signatures}
