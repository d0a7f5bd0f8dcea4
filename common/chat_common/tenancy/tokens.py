"""Application tokens at rest: looked up by digest, and kept readable only as a sealed (encrypted) copy.

The database never needs a tenant's token to *recognise* it: every lookup is by :func:`token_digest`, SHA-256 of the
token. A fast, unsalted hash is enough here — the slow, salted hashes (bcrypt, scrypt, Argon2) exist to make
guessing *low-entropy* secrets (passwords) expensive, and a token is 192 bits from the OS CSPRNG: no dictionary or
brute force can invert its SHA-256, with or without a salt, while a slow hash would put tens of milliseconds of CPU
on every cache miss of the API. A digest is also what makes the lookup indexable (a salt per row would not be).

A few operations do need the token itself again later: the admin listing, the admin answers about an application,
an idempotent replay of its creation, and the operator restoring a hand-deleted token Secret. For those the row
keeps :class:`TokenSealer`'s AES-256-GCM sealed copy, under a key that is never in the database
(``TOKEN_SEALING_KEY``, from a chart-generated Secret): a database or backup leak alone exposes no token. The digest is
the sealed copy's associated data, so a sealed copy moved to another row does not open there. Without a key nothing
reversible is stored; those operations answer what they can (see docs/security.md).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SEALED_PREFIX = "v1."  # a format version, so another scheme (or key) can follow without guessing
NONCE_BYTES = 12


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def token_digest(token: str) -> str:
    """What the database stores and is searched by for a token: SHA-256 in lower-case hex (64 ASCII characters), the
    same as MySQL's ``SHA2(token, 256)``, so the migration and an operator can compute it in SQL too."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


MIN_KEY_CHARS = 32  # the chart generates 32 random alphanumerics (~190 bits), or 40 hex from its password seed


class TokenSealer:
    """AES-256-GCM with a random 96-bit nonce per seal; the token's digest is the associated data.

    The AES key is derived from ``TOKEN_SEALING_KEY`` with HKDF-SHA256 (``info`` names the purpose), so any random
    string of at least 32 characters will do — the same kind of secret the chart generates for its other keys.
    """

    def __init__(self, key: str) -> None:
        if len(key) < MIN_KEY_CHARS:
            raise ValueError(f"TOKEN_SEALING_KEY must be at least {MIN_KEY_CHARS} characters")
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"chat-system token sealing v1")
        self._aead = AESGCM(derived.derive(key.encode("utf-8")))

    @classmethod
    def from_key(cls, key: str | None) -> TokenSealer | None:
        """A sealer for ``TOKEN_SEALING_KEY``, or None when no key is configured."""
        return cls(key) if key else None

    def seal(self, token: str) -> str:
        """The token encrypted and authenticated, as ASCII for the ``*_sealed`` columns."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, token.encode("utf-8"), token_digest(token).encode("ascii"))
        return SEALED_PREFIX + _b64(nonce + sealed)

    def unseal(self, sealed: str | None, digest: str | None) -> str | None:
        """The token in ``sealed`` if it opens with this key for ``digest``; None otherwise (no copy, another key,
        tampered, or moved from another row)."""
        if not sealed or not digest or not sealed.startswith(SEALED_PREFIX):
            return None
        try:
            raw = _unb64(sealed[len(SEALED_PREFIX) :])
            token = self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], digest.encode("ascii"))
        except (InvalidTag, binascii.Error, ValueError):
            return None
        return token.decode("utf-8")

    def seal_for(self, plaintext: str, context: str) -> str:
        """``plaintext`` sealed with ``context`` as the associated data (same ``v1.`` format as :meth:`seal`).

        For secrets that have no digest to bind to, e.g. a webhook endpoint's signing secret, sealed for
        ``f"webhook:{application_id}:{name}"``: the copy opens only for the endpoint it was sealed for.
        """
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext.encode("utf-8"), context.encode("utf-8"))
        return SEALED_PREFIX + _b64(nonce + sealed)

    def unseal_for(self, sealed: str | None, context: str) -> str | None:
        """What :meth:`seal_for` sealed for ``context``; None if there is no copy or it does not open (another key,
        another context, tampered)."""
        if not sealed or not sealed.startswith(SEALED_PREFIX):
            return None
        try:
            raw = _unb64(sealed[len(SEALED_PREFIX) :])
            plaintext = self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], context.encode("utf-8"))
        except (InvalidTag, binascii.Error, ValueError):
            return None
        return plaintext.decode("utf-8")


def new_sealing_key() -> str:
    """A fresh ``TOKEN_SEALING_KEY`` (the chart generates its own; tests make one per namespace)."""
    return _b64(os.urandom(32))
