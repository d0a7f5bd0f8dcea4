"""One database user per duty (chat_common.ops.grants, what the chart's migrations Job runs), on the real MariaDB.

The test provisions a migrations user and an application user of its own for a database of its own, exactly as the
chart does (``python -m chat_common.ops.grants`` with DATABASE_URL, DATABASE_MIGRATIONS_URL and the administrator's
password in the environment), then checks:

- the migrations user builds the schema (``python -m chat_common.ops.migrate`` picks DATABASE_MIGRATIONS_URL);
- the application user reads and writes rows but cannot ``CREATE``, ``ALTER``, ``DROP`` or ``GRANT``;
- with only the application user, every component does its job: the API and both writers (a message goes from the
  API to its row), the count sync, the operator's provisioning of a tenant;
- running it again (an upgrade) narrows an application user that was given more, and changes a password.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pymysql
import pytest
import sqlalchemy.exc
from sqlalchemy import text
from sqlalchemy.engine import make_url

from chat_common.clients.db import drop_database, make_engine
from chat_common.clients.redis_client import sync_client
from chat_common.config import Settings
from chat_common.tenancy.applications import build_applications
from chat_devtools.http import Api
from chat_devtools.namespace import BASE_DATABASE_URL, Namespace
from chat_devtools.processes import System
from chat_operator.provisioning import Provisioner, Spec
from tests.conftest import LOG_ROOT

DENIED = r"1142|1044|1045|1227|denied"


@dataclass
class Users:
    database: str
    application_url: str
    migrations_url: str

    def run(self, module: str, **env: str) -> subprocess.CompletedProcess:
        """``python -m <module>`` as the chart's Job runs it (environment only)."""
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "MARIADB_"))}
        environ |= {
            "DATABASE_URL": self.application_url,
            "DATABASE_MIGRATIONS_URL": self.migrations_url,
            "MARIADB_ROOT_PASSWORD": make_url(BASE_DATABASE_URL).password or "",
            "DATABASE_ADMIN_USER": make_url(BASE_DATABASE_URL).username or "root",
            **env,
        }
        return subprocess.run(
            [sys.executable, "-m", module], env=environ, capture_output=True, text=True, timeout=120, check=False
        )


def _url(user: str, password: str, database: str) -> str:
    return (
        make_url(BASE_DATABASE_URL)
        .set(username=user, password=password, database=database)
        .render_as_string(hide_password=False)
    )


def _root(*statements: str) -> None:
    engine = make_engine(make_url(BASE_DATABASE_URL).set(database=""), pool_size=1)
    try:
        with engine.connect() as conn:
            for statement in statements:
                conn.execute(text(statement))
            conn.commit()
    finally:
        engine.dispose()


@pytest.fixture
def users() -> Iterator[Users]:
    suffix = uuid.uuid4().hex[:8]
    database = f"cs_grants_{suffix}"
    app_user, ddl_user = f"cs_app_{suffix}", f"cs_ddl_{suffix}"
    created = Users(
        database,
        _url(app_user, f"app-{uuid.uuid4().hex}", database),
        _url(ddl_user, f"ddl-{uuid.uuid4().hex}", database),
    )
    try:
        done = created.run("chat_common.ops.grants")
        assert done.returncode == 0, done.stderr
        done = created.run("chat_common.ops.migrate")
        assert done.returncode == 0, done.stderr
        yield created
    finally:
        drop_database(
            _url(make_url(BASE_DATABASE_URL).username or "root", make_url(BASE_DATABASE_URL).password or "", database)
        )
        _root(f"DROP USER IF EXISTS '{app_user}'@'%'", f"DROP USER IF EXISTS '{ddl_user}'@'%'")


def _execute(url: str, *statements: str) -> None:
    engine = make_engine(url, pool_size=1)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(text(statement))
    finally:
        engine.dispose()


def test_the_migrations_user_built_the_schema_and_the_application_user_has_rows_only(users: Users):
    _execute(
        users.application_url,
        "INSERT INTO applications (token, name) VALUES ('grants-test-token-0000000000000', 'g')",
        "UPDATE applications SET name = 'h' WHERE token = 'grants-test-token-0000000000000'",
        "SELECT COUNT(*) FROM messages",
        "DELETE FROM applications WHERE token = 'grants-test-token-0000000000000'",
    )
    for statement in (
        "CREATE TABLE leaked (id INT PRIMARY KEY)",
        "DROP TABLE messages",
        "ALTER TABLE messages ADD COLUMN leaked INT",
        "TRUNCATE TABLE chats",
        "CREATE INDEX leaked ON chats (name)",
        f"GRANT SELECT ON `{users.database}`.* TO CURRENT_USER",
        f"DROP DATABASE `{users.database}`",
    ):
        with pytest.raises(sqlalchemy.exc.OperationalError, match=DENIED):
            _execute(users.application_url, statement)
    _execute(users.migrations_url, "CREATE TABLE allowed (id INT PRIMARY KEY)", "DROP TABLE allowed")


def test_every_component_works_with_the_application_user(users: Users):
    namespace = Namespace(
        f"cs_grants_{uuid.uuid4().hex[:6]}",
        Settings.from_env(
            database_url=users.application_url,
            redis_key_prefix=f"{users.database}:",
            queue_prefix=users.database,
            search_index=f"{users.database}_messages",
            publish_timeout_seconds=2.0,
            writer_max_wait_seconds=0.1,
            writer_retry_delays_seconds=(1, 2),
        ),
    )
    system = System(namespace, LOG_ROOT / f"grants-{users.database}", api_workers=1).start()
    engine = make_engine(users.application_url, pool_size=1)
    client = sync_client(namespace.settings.redis_url)
    try:
        Api(system.base_url).first_message_stored("least privilege", "written by a DML-only user")
        done = system.sync_counts()  # the count sync (counter-cron)
        assert done.returncode == 0, done.stderr
        # The operator provisions a tenant straight in MySQL.
        provisioner = Provisioner(build_applications(namespace.settings, engine, client))
        assert provisioner.provision(str(uuid.uuid4()), Spec(name="from the operator")).created
    finally:
        system.stop()
        engine.dispose()
        client.close()
        # Dropping the database is the migrations' right, not the application user's: clean up as root.
        root = _url(
            make_url(BASE_DATABASE_URL).username or "root", make_url(BASE_DATABASE_URL).password or "", users.database
        )
        Namespace(namespace.name, dataclasses.replace(namespace.settings, database_url=root)).destroy()


def test_provisioning_again_narrows_the_application_user_and_sets_passwords(users: Users):
    app = make_url(users.application_url)
    _root(f"GRANT ALL PRIVILEGES ON `{users.database}`.* TO '{app.username}'@'%'")
    _execute(users.application_url, "CREATE TABLE widened (id INT PRIMARY KEY)", "DROP TABLE widened")
    rotated = app.set(password=f"new-{uuid.uuid4().hex}").render_as_string(hide_password=False)
    done = Users(users.database, rotated, users.migrations_url).run("chat_common.ops.grants")
    assert done.returncode == 0, done.stderr
    with pytest.raises(sqlalchemy.exc.OperationalError, match=DENIED):
        _execute(rotated, "CREATE TABLE widened (id INT PRIMARY KEY)")
    with pytest.raises(pymysql.err.OperationalError, match="1045"):  # the former password
        pymysql.connect(host=app.host, port=app.port or 3306, user=app.username, password=app.password).close()


def test_one_user_for_everything_is_left_alone():
    url = _url("root", make_url(BASE_DATABASE_URL).password or "", "cs_grants_single")
    done = Users("cs_grants_single", url, url).run("chat_common.ops.grants")
    assert done.returncode == 0, done.stderr
    assert "nothing to separate" in done.stderr + done.stdout
