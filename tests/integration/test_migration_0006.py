"""Migration 0006 (tokens stored as digests) and the rollout's last step, on a database of the test's own.

From 0005 with applications (over several batches, one rotated), to 0006: digests and sealed copies filled, the
plaintexts kept for the previous version; then ``--erase-plaintext``: no plaintext left anywhere in the table, and
the new code still finds every tenant, shows its token to the admin and keeps the former token's grace. A row the
previous version rotated during the rollout is re-derived by the last step. Back to 0005 restores the plaintexts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from chat_common.ops.migrate import upgrade
from chat_common.ops.token_migration import convert
from chat_common.tenancy.applications import Applications
from chat_common.tenancy.tokens import TokenSealer, new_sealing_key, token_digest
from chat_common.wire.keys import RedisKeys
from tests.integration.conftest import differences_from_metadata, downgrade, migrated_database

COUNT = 1_100  # over two batches of 1000


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    value = new_sealing_key()
    monkeypatch.setenv("TOKEN_SEALING_KEY", value)  # the migration reads it as the chart's job does
    return value


@pytest.fixture
def database(key) -> Iterator[tuple[str, Engine]]:
    with migrated_database("cs_m6", "0005") as database:
        yield database


def _seed(engine: Engine) -> dict[str, str]:
    """``COUNT`` applications as the previous version wrote them; the first one rotated (its former token valid)."""
    tokens = {f"tok{i:05d}" + "x" * 24: f"app {i}" for i in range(COUNT)}
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO applications (token, name) VALUES (:t, :n)"),
            [{"t": t, "n": n} for t, n in tokens.items()],
        )
        conn.execute(
            text(
                "UPDATE applications SET previous_token = 'former-token-of-app-0', previous_token_expires_at ="
                " NOW(6) + INTERVAL 1 HOUR WHERE token = :t"
            ),
            {"t": next(iter(tokens))},
        )
    return tokens


def _applications(engine: Engine, key: str | None) -> Applications:
    return Applications(engine, None, RedisKeys("m6:"), sealer=TokenSealer.from_key(key))  # type: ignore[arg-type]


def test_0006_converts_existing_tokens_then_the_last_step_erases_every_plaintext(database, key, caplog):
    url, engine = database
    tokens = _seed(engine)
    first = next(iter(tokens))
    with caplog.at_level(logging.INFO, logger="chat_common.ops.token_migration"):
        upgrade(url)
    assert any(f"{COUNT} of {COUNT} applications" in r.getMessage() for r in caplog.records)  # progress
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT token, token_digest, token_sealed FROM applications")).all()
    assert all(r.token_digest == token_digest(r.token) and r.token_sealed for r in rows)
    assert all(r.token for r in rows)  # kept: processes of the previous version still look tokens up by it

    with engine.connect() as conn:
        assert convert(conn, TokenSealer.from_key(key), erase=True) == COUNT
    with engine.connect() as conn:
        dump = conn.execute(text("SELECT * FROM applications")).all()
    assert all(t not in repr(dump) for t in tokens) and "former-token-of-app-0" not in repr(dump)

    applications = _applications(engine, key)
    found = applications.find(first)
    assert found is not None and found.token == first and found.name == "app 0"
    former = applications.find("former-token-of-app-0")
    assert former is not None and former.id == found.id and former.previous_token == "former-token-of-app-0"
    listed = applications.list(0, 5)
    assert [a.token for a in listed] == list(tokens)[:5]  # the admin listing, from the sealed copies
    # Without the key: still found by digest; the token is known only where the caller gave it.
    keyless = _applications(engine, None)
    assert keyless.find(first).token == first
    assert keyless.list(0, 1)[0].token is None
    # A database leak alone: the digests do not give the tokens back, the sealed copies need the key.
    assert TokenSealer.from_key(new_sealing_key()).unseal(dump[0].token_sealed, dump[0].token_digest) is None


def test_a_rotation_by_the_previous_version_during_the_rollout_is_re_derived(database, key):
    url, engine = database
    tokens = _seed(engine)
    second = list(tokens)[1]
    upgrade(url)
    with engine.begin() as conn:  # a process of the previous version rotates: plaintext columns only
        conn.execute(
            text(
                "UPDATE applications SET previous_token = token, previous_token_expires_at = NOW(6) + INTERVAL 1 HOUR,"
                " token = 'rotated-by-the-old-version' WHERE token = :t"
            ),
            {"t": second},
        )
    with engine.connect() as conn:
        convert(conn, TokenSealer.from_key(key), erase=True)
    applications = _applications(engine, key)
    rotated = applications.find("rotated-by-the-old-version")
    assert rotated is not None and rotated.token == "rotated-by-the-old-version"
    assert applications.find(second).id == rotated.id  # the former token, in its grace period


def test_the_erase_step_resumes_and_repeats_harmlessly(database, key):
    url, engine = database
    _seed(engine)
    upgrade(url)
    with engine.connect() as conn:
        convert(conn, TokenSealer.from_key(key), erase=True, batch=100)
        assert convert(conn, TokenSealer.from_key(key), erase=True) == 0
        assert conn.execute(text("SELECT COUNT(*) FROM applications WHERE token IS NOT NULL")).scalar() == 0


def test_a_downgrade_puts_the_plaintexts_back(database, key):
    url, engine = database
    tokens = _seed(engine)
    upgrade(url)
    with engine.connect() as conn:
        convert(conn, TokenSealer.from_key(key), erase=True)
    downgrade(engine, "0005")
    with engine.connect() as conn:
        assert {r.token for r in conn.execute(text("SELECT token FROM applications"))} == set(tokens)


def test_an_empty_database_reaches_head_in_the_shape_of_the_metadata():
    with migrated_database("cs_m6e") as (_, engine):
        assert differences_from_metadata(engine, "applications") == []
