"""Tokens at rest, for rows written before migration 0006: fill digests and sealed copies, then erase plaintexts.

Two steps of a rolling upgrade (docs/security.md, "Upgrading to digests"):

1. Migration 0006 (before the new version's processes start) adds the columns and calls :func:`convert` with
   ``erase=False``: every row gets the digest (and, with ``TOKEN_SEALING_KEY``, the sealed copy) of the tokens it
   holds, and keeps its plaintext — processes of the previous version, still serving during the rollout, look
   tokens up by it.
2. Once every process runs the new version (which never reads or writes plaintexts):
   ``python -m chat_common.ops.token_migration --erase-plaintext`` runs :func:`convert` with ``erase=True``: digests and
   sealed copies are re-derived from any plaintext still there (a row a previous-version process rotated during
   the rollout has a new plaintext and stale digests) and the plaintext columns are set to NULL.

Both are resumable and safe to repeat: batches of ``applications.id`` in order, each its own short transaction,
progress logged; a row is only rewritten if its plaintexts are still the ones read (a concurrent rotation wins,
and the next run picks the row up). Without a sealing key erasing is refused, unless asked for explicitly: the
tokens could then never be shown again (admin listing, a deleted Secret restored).
"""

from __future__ import annotations

import argparse
import logging
import sys

from sqlalchemy import Connection, text

from chat_common.tenancy.tokens import TokenSealer, token_digest

log = logging.getLogger("chat_common.ops.token_migration")
BATCH = 1000

_PENDING = {
    # Rows whose digests or sealed copies do not match the plaintexts they hold yet.
    False: """
        (token IS NOT NULL AND (token_digest IS NULL OR token_digest <> CONVERT(SHA2(token, 256) USING ascii)
            OR (:sealing AND token_sealed IS NULL)))
        OR (previous_token IS NOT NULL AND (previous_token_digest IS NULL
            OR previous_token_digest <> CONVERT(SHA2(previous_token, 256) USING ascii)
            OR (:sealing AND previous_token_sealed IS NULL)))
    """,
    # Every row that still holds a plaintext.
    True: "token IS NOT NULL OR previous_token IS NOT NULL",
}


def _values(token: str | None, sealer: TokenSealer | None, prefix: str) -> dict[str, str | None]:
    if token is None:
        return {f"{prefix}_digest_new": None, f"{prefix}_sealed_new": None}
    return {
        f"{prefix}_digest_new": token_digest(token),
        f"{prefix}_sealed_new": sealer.seal(token) if sealer is not None else None,
    }


def convert(connection: Connection, sealer: TokenSealer | None, *, erase: bool, batch: int = BATCH) -> int:
    """Bring every row's digests and sealed copies in line with its plaintexts (and, with ``erase``, NULL them).

    Commits after each batch (the caller's transaction included: MySQL DDL before it committed anyway). Returns the
    number of rows rewritten.
    """
    where = _PENDING[erase]
    params = {"sealing": sealer is not None}
    total = connection.execute(text(f"SELECT COUNT(*) FROM applications WHERE {where}"), params).scalar_one()
    log.info("tokens at rest: %d applications to %s", total, "erase plaintexts of" if erase else "convert")
    done, after = 0, 0
    # Digest columns are only written where a plaintext says what they are; a row without one keeps its own.
    update = text(
        "UPDATE applications SET"
        " token_digest = COALESCE(:token_digest_new, token_digest),"
        " token_sealed = COALESCE(:token_sealed_new, token_sealed),"
        " previous_token_digest = IF(:previous_known, :previous_digest_new, previous_token_digest),"
        " previous_token_sealed = IF(:previous_known, :previous_sealed_new, previous_token_sealed)"
        + (", token = NULL, previous_token = NULL" if erase else "")
        + " WHERE id = :id AND token <=> :token AND previous_token <=> :previous"
    )
    batch_query = text(
        f"SELECT id, token, previous_token FROM applications WHERE id > :after AND ({where}) ORDER BY id LIMIT :n"
    )
    while True:
        rows = connection.execute(
            batch_query,
            {**params, "after": after, "n": batch},
        ).all()
        if not rows:
            break
        for row in rows:
            values = {
                "id": row.id,
                "token": row.token,
                "previous": row.previous_token,
                "previous_known": row.previous_token is not None,
                **_values(row.token, sealer, "token"),
                **_values(row.previous_token, sealer, "previous"),
            }
            done += connection.execute(update, values).rowcount
        after = rows[-1].id
        connection.exec_driver_sql("COMMIT")  # each batch on its own: short row locks
        log.info("tokens at rest: %d of %d applications (up to id %d)", done, total, after)
    return done


def main(argv: list[str] | None = None) -> int:
    """``python -m chat_common.ops.token_migration [--erase-plaintext [--without-sealed-copies]]``."""
    from chat_common import logs
    from chat_common.clients.db import make_engine
    from chat_common.config import Settings

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--erase-plaintext", action="store_true", help="step 2: erase the plaintext token columns")
    parser.add_argument(
        "--without-sealed-copies",
        action="store_true",
        help="erase even without TOKEN_SEALING_KEY: those tokens can never be shown or restored again",
    )
    args = parser.parse_args(argv)
    logs.configure()
    settings = Settings.from_env()
    sealer = TokenSealer.from_key(settings.token_sealing_key)
    if args.erase_plaintext and sealer is None and not args.without_sealed_copies:
        log.error("TOKEN_SEALING_KEY is unset: erasing would leave no way to show or restore any token; set it, or")
        log.error("pass --without-sealed-copies if that is what you want")
        return 2
    engine = make_engine(settings.database_url, pool_size=1, read_timeout=None)
    try:
        with engine.connect() as connection:
            convert(connection, sealer, erase=args.erase_plaintext)
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
