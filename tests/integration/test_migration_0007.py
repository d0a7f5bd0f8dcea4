"""Migration 0007 (a tenant's own CORS origins), on a database of the test's own: from 0006 with an application,
to 0007 — the application keeps the deployment's origins (NULL) and takes a list of its own — and back to 0006."""

from __future__ import annotations

import uuid

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import make_url

from chat_common.clients.db import drop_database, make_engine
from chat_common.ops.migrate import MIGRATIONS_DIR, upgrade
from chat_common.tenancy.applications import Applications
from chat_common.tenancy.tokens import token_digest
from chat_common.wire.keys import RedisKeys
from chat_devtools.namespace import BASE_DATABASE_URL


def test_applications_get_their_own_origins_and_a_downgrade_drops_them():
    name = f"cs_m7_{uuid.uuid4().hex[:10]}"
    url = make_url(BASE_DATABASE_URL).set(database=name).render_as_string(hide_password=False)
    engine = None
    try:
        upgrade(url, "0006")
        engine = make_engine(url, pool_size=1)
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO applications (name, token_digest, created_at, updated_at)"
                    " VALUES ('old', :d, NOW(6), NOW(6))"
                ),
                {"d": token_digest("an-old-token-" + "x" * 20)},
            )
        upgrade(url, "0007")
        applications = Applications(engine, client=None, keys=RedisKeys("m7:"))  # no Redis needed for these
        before = applications.find("an-old-token-" + "x" * 20)
        assert before is not None and before.cors_origins is None  # the deployment's, as before
        after = applications.set_cors_origins(before.id, ("https://chat.example", "http://127.0.0.1:8000"))
        assert after.cors_origins == ("https://chat.example", "http://127.0.0.1:8000")
        assert applications.set_cors_origins(before.id, ()).cors_origins == ()  # none allowed: not the default
        assert applications.set_cors_origins(before.id, None).cors_origins is None
        with engine.begin() as conn:
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS_DIR))
            config.attributes["connection"] = conn
            command.downgrade(config, "0006")
        with engine.connect() as conn:
            columns = {r[0] for r in conn.execute(text("SHOW COLUMNS FROM applications"))}
        assert "cors_origins" not in columns and "token_digest" in columns
    finally:
        if engine is not None:
            engine.dispose()
        drop_database(url)
