"""`python -m chat_common.ops.grants`: one database user per duty, created or brought in line on every install/upgrade.

Two users share the schema:

- the **migrations user** (``DATABASE_MIGRATIONS_URL``): every privilege on the database (``CREATE``, ``ALTER``,
  ``DROP``, ``INDEX`` … — what Alembic's revisions need); only the migrations Job holds it;
- the **application user** (``DATABASE_URL``): ``SELECT, INSERT, UPDATE, DELETE`` on the database and nothing else —
  what the API, the writers, the count sync and the operator need (they read and write rows; none of them changes
  the schema). A leaked application credential cannot drop or alter a table, create one, or grant anything.

The chart's migrations Job runs this first (with the bundled MariaDB's root, ``MARIADB_ROOT_PASSWORD``), then the
migrations as the migrations user. It is idempotent: each user is created if missing, its password set to the one
in its URL, every privilege revoked and exactly its own granted again, so an upgrade also narrows a user that had
more. With no ``DATABASE_MIGRATIONS_URL``, or the same user in both URLs (``make run``, a single-user external
database), there is nothing to separate and it does nothing.

A user created here may connect from any host (``'%'``): the network policies, not the user's host part, decide
which pods reach the database. The replica-lag probe's ``REPLICA MONITOR`` (``DATABASE_READ_URL``) is granted on the
replica by whoever runs it; this module manages the primary's users only.
"""

from __future__ import annotations

import logging
import os
import sys

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

from chat_common import logs
from chat_common.clients.db import connect_args

log = logging.getLogger("chat_common.ops.grants")

APPLICATION_PRIVILEGES = "SELECT, INSERT, UPDATE, DELETE"
MIGRATIONS_PRIVILEGES = "ALL PRIVILEGES"


def _ident(name: str) -> str:
    """A quoted identifier (database name)."""
    return "`" + name.replace("`", "``") + "`"


def _account(user: str) -> str:
    """A quoted account name (``'user'@'%'``)."""
    return "'" + user.replace("\\", "\\\\").replace("'", "''") + "'@'%'"


def user_statements(database: str, user: str, privileges: str) -> list[str]:
    """The statements that leave ``user`` with exactly ``privileges`` on ``database`` (the password is bound as
    ``:password``, never written into the text)."""
    account, schema = _account(user), _ident(database)
    return [
        f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY :password",
        f"ALTER USER {account} IDENTIFIED BY :password",
        f"REVOKE ALL PRIVILEGES, GRANT OPTION FROM {account}",
        f"GRANT {privileges} ON {schema}.* TO {account}",
    ]


def provision(admin_url: str | URL, application_url: str | URL, migrations_url: str | URL) -> bool:
    """Create or bring in line both users on the server of ``admin_url`` (a user with ``CREATE USER`` and
    ``GRANT OPTION``: root). Returns False (and changes nothing) when the two URLs name the same user."""
    app, migrations = make_url(application_url), make_url(migrations_url)
    if not app.database or app.database != migrations.database:
        raise ValueError("DATABASE_URL and DATABASE_MIGRATIONS_URL must name the same database")
    if app.username == migrations.username:
        return False
    url, args = connect_args(admin_url)
    engine = create_engine(url.set(database=""), isolation_level="AUTOCOMMIT", connect_args=args)
    try:
        with engine.connect() as conn:
            for target, privileges in ((migrations, MIGRATIONS_PRIVILEGES), (app, APPLICATION_PRIVILEGES)):
                for statement in user_statements(app.database, target.username, privileges):
                    conn.execute(text(statement), {"password": target.password or ""})
                log.info("database user %s: %s on %s", target.username, privileges, app.database)
    finally:
        engine.dispose()
    return True


def admin_url(migrations_url: str, user: str, password: str) -> URL:
    """The migrations URL (server, TLS options) with the administrator's credentials instead."""
    return make_url(migrations_url).set(username=user, password=password)


def main() -> None:
    """Entry point of the chart's provisioning step: ``DATABASE_URL``, ``DATABASE_MIGRATIONS_URL``,
    ``MARIADB_ROOT_PASSWORD`` (and ``DATABASE_ADMIN_USER``, default root) from the environment."""
    logs.configure()
    application, migrations = os.environ.get("DATABASE_URL"), os.environ.get("DATABASE_MIGRATIONS_URL")
    if not application:
        sys.exit("chat_common.ops.grants: DATABASE_URL is not set")
    if not migrations:
        log.info("no DATABASE_MIGRATIONS_URL: one database user for every component, nothing to provision")
        return
    admin = admin_url(
        migrations, os.environ.get("DATABASE_ADMIN_USER", "root"), os.environ.get("MARIADB_ROOT_PASSWORD", "")
    )
    if not provision(admin, application, migrations):
        log.info("DATABASE_URL and DATABASE_MIGRATIONS_URL name the same user: nothing to separate")


if __name__ == "__main__":
    main()
