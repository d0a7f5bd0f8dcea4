"""Tokens at rest (chat_common.tenancy.tokens): digests to look up, sealed copies only the key opens."""

from __future__ import annotations

import base64
import hashlib

import pytest

from chat_common.tenancy.applications import Application
from chat_common.tenancy.tokens import TokenSealer, new_sealing_key, token_digest


def test_the_digest_is_sha256_hex_as_mysql_computes_it():
    assert (
        token_digest("abc")
        == hashlib.sha256(b"abc").hexdigest()
        == ("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    )


def test_a_sealed_copy_opens_only_with_its_key_and_for_its_own_digest():
    sealer = TokenSealer.from_key(new_sealing_key())
    sealed = sealer.seal("the-token")
    assert "the-token" not in sealed and sealed.isascii() and len(sealed) <= 128
    assert sealer.unseal(sealed, token_digest("the-token")) == "the-token"
    assert sealer.seal("the-token") != sealed  # a fresh nonce each time
    assert TokenSealer.from_key(new_sealing_key()).unseal(sealed, token_digest("the-token")) is None  # another key
    assert sealer.unseal(sealed, token_digest("another-token")) is None  # moved to another row
    tampered = sealed[:-2] + ("AA" if sealed[-2:] != "AA" else "BB")
    assert sealer.unseal(tampered, token_digest("the-token")) is None
    assert sealer.unseal(None, token_digest("the-token")) is None


def test_a_secret_sealed_for_a_context_opens_only_for_that_context():
    sealer = TokenSealer.from_key(new_sealing_key())
    secret = "whsec_" + base64.b64encode(bytes(range(64))).decode("ascii")  # the longest webhook secret
    sealed = sealer.seal_for(secret, "webhook:7:orders")
    assert secret not in sealed and sealed.startswith("v1.") and sealed.isascii() and len(sealed) <= 255
    assert sealer.unseal_for(sealed, "webhook:7:orders") == secret
    assert sealer.seal_for(secret, "webhook:7:orders") != sealed  # a fresh nonce each time
    assert sealer.unseal_for(sealed, "webhook:7:billing") is None  # another endpoint's row
    assert sealer.unseal_for(sealed, "webhook:8:orders") is None  # another application's
    assert TokenSealer.from_key(new_sealing_key()).unseal_for(sealed, "webhook:7:orders") is None  # another key
    tampered = sealed[:-2] + ("AA" if sealed[-2:] != "AA" else "BB")
    assert sealer.unseal_for(tampered, "webhook:7:orders") is None
    assert sealer.unseal_for(None, "webhook:7:orders") is None and sealer.unseal_for("", "webhook:7:orders") is None


def test_a_short_key_is_refused_and_no_key_means_no_sealer():
    with pytest.raises(ValueError, match="at least 32"):
        TokenSealer.from_key("short")
    assert TokenSealer.from_key(None) is None and TokenSealer.from_key("") is None


def test_an_application_known_by_digest_learns_the_plaintext_its_caller_holds():
    app = Application(None, "n", 0, 1, token_digest=token_digest("new"), previous_token_digest=token_digest("old"))
    assert app.is_current("new") and not app.is_current("old")
    assert app.knowing("new").token == "new" and app.knowing("old").previous_token == "old"
    assert app.knowing("stranger") == app
    seen = app.seen_with("old")
    assert seen.token == "old" and seen.previous_token_digest is None and not seen.is_current("old")
