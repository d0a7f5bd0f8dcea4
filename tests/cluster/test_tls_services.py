"""TLS to MySQL and Redis, honoured by every client the URL reaches, against servers that accept nothing else.

A private MariaDB with ``require_secure_transport=ON`` and a private ``redis-server`` with ``--port 0 --tls-port``
(chat_devtools.private_services), each presenting a certificate for ``localhost`` / 127.0.0.1 signed by a CA made
for the test (chat_devtools.rabbit_cluster.LoopbackCertificates). Checked, with real handshakes:

- the servers refuse cleartext (so a client that connects at all used TLS, and the session says so: ``Ssl_cipher``);
- every MySQL client given ``?ssl_ca=…`` connects over TLS: the migrations (database creation included), the
  writers' and operator's SQLAlchemy engines (PyMySQL), and the API's asyncmy pool — the one that used to drop every
  option of the URL but ``charset``;
- ``rediss://…?ssl_ca_certs=…`` works for the blocking and asyncio clients;
- a CA that did not sign the server's certificate fails closed: a connection error (the API's 503), not cleartext;
- the whole system (API and writers, real processes) serves over both TLS connections, and answers 503 with
  Retry-After, never 500, when the CA it is given does not verify the database.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pymysql
import pytest
import redis
import redis.asyncio
import sqlalchemy.exc
from sqlalchemy import text

from chat_api.adapters.database import Database
from chat_api.model import DatabaseUnavailable
from chat_common.clients.db import drop_database, make_engine
from chat_common.clients.redis_client import async_client, sync_client
from chat_common.ops.migrate import upgrade
from chat_devtools.http import Api, wait_for
from chat_devtools.namespace import Namespace
from chat_devtools.private_services import MARIADB_INSTALL_DB, MARIADBD, REDIS_SERVER, TlsMariaDB, TlsRedis
from chat_devtools.processes import System
from chat_devtools.rabbit_cluster import LoopbackCertificates
from tests.cluster.conftest import skip_unless_servers_start_here
from tests.conftest import LOG_ROOT

pytestmark = pytest.mark.slow


@dataclass
class TlsServers:
    mariadb: TlsMariaDB
    redis: TlsRedis
    certificates: LoopbackCertificates
    other_ca: LoopbackCertificates  # a CA that signed nothing these servers present


def _unavailable_reason() -> str | None:
    missing = [b for b in (MARIADBD, MARIADB_INSTALL_DB, REDIS_SERVER) if not os.access(b, os.X_OK)]
    if missing:
        return f"missing server binaries: {', '.join(missing)}"
    return None if shutil.which("openssl") else "openssl is not installed"


@pytest.fixture(scope="module")
def servers() -> Iterator[TlsServers]:
    skip_unless_servers_start_here("MariaDB and Redis with TLS", _unavailable_reason)
    root = LOG_ROOT / f"tls-services-{uuid.uuid4().hex[:8]}"
    certificates, other = LoopbackCertificates(root / "tls"), LoopbackCertificates(root / "other-ca")
    mariadb, redis_server = TlsMariaDB(root, certificates), TlsRedis(root, certificates)
    try:
        mariadb.start()
        redis_server.start()
        yield TlsServers(mariadb, redis_server, certificates, other)
    finally:
        redis_server.stop()
        mariadb.stop()
        shutil.rmtree(mariadb.dir / "data", ignore_errors=True)


@pytest.fixture
def database(servers: TlsServers) -> Iterator[str]:
    """A fresh database on the TLS server, migrated over TLS; its name."""
    name = f"cs_tls_{uuid.uuid4().hex[:10]}"
    url = servers.mariadb.tls_url(name)
    upgrade(url)  # creates the database (server-level connection) and runs every migration, both over TLS
    yield name
    drop_database(url)


def _cipher(engine) -> str:
    with engine.connect() as conn:
        return conn.execute(text("SHOW SESSION STATUS LIKE 'Ssl_cipher'")).one()[1]


def test_the_servers_refuse_cleartext(servers: TlsServers, database: str):
    # PyMySQL alone tries TLS without verifying anything (its "preferred" mode): switch that off to see cleartext.
    # MariaDB answers a cleartext login with "access denied"; the same credentials over TLS get in.
    login = dict(host="127.0.0.1", port=servers.mariadb.port, user=servers.mariadb.user, connect_timeout=2)
    with pytest.raises(pymysql.err.OperationalError, match=r"1045|insecure transport"):
        pymysql.connect(**login, password=servers.mariadb.password, ssl_disabled=True)
    pymysql.connect(**login, password=servers.mariadb.password, ssl={"ca": str(servers.certificates.ca)}).close()
    client = redis.Redis(host="127.0.0.1", port=servers.redis.port, socket_timeout=2, password=servers.redis.password)
    with pytest.raises(redis.ConnectionError):
        client.ping()
    client.close()


def test_the_sqlalchemy_engines_connect_over_tls(servers: TlsServers, database: str):
    engine = make_engine(servers.mariadb.tls_url(database), pool_size=1)
    try:
        assert _cipher(engine)  # empty on a cleartext session
        with engine.connect() as conn:
            assert conn.execute(text("SELECT COUNT(*) FROM applications")).scalar() == 0  # migrated over TLS
    finally:
        engine.dispose()


def test_the_api_read_pool_connects_over_tls(servers: TlsServers, database: str):
    async def cipher() -> str:
        db = Database(servers.mariadb.tls_url(database), pool_size=1)
        try:
            rows = await db.rows_of_sql("SHOW SESSION STATUS LIKE 'Ssl_cipher'", {})
            return rows[0][1]
        finally:
            await db.close()

    assert asyncio.run(cipher())


def test_a_ca_that_did_not_sign_the_database_fails_closed(servers: TlsServers, database: str):
    url = servers.mariadb.tls_url(database, ca=servers.other_ca.ca)
    engine = make_engine(url, pool_size=1)
    try:
        with pytest.raises(sqlalchemy.exc.OperationalError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify"):
            _cipher(engine)
    finally:
        engine.dispose()

    async def read() -> None:
        db = Database(url, pool_size=1, timeout=5)
        try:
            await db.rows_of_sql("SELECT 1", {})
        finally:
            await db.close()

    with pytest.raises(DatabaseUnavailable):  # the API's 503
        asyncio.run(read())


def test_the_host_name_is_verified(servers: TlsServers, database: str):
    """The certificate names localhost and 127.0.0.1: another name of the same address is refused."""
    other_name = socket.gethostname()  # resolves to 127.0.0.1 on this machine (/etc/hosts)
    if socket.gethostbyname(other_name) != "127.0.0.1" or other_name == "localhost":
        pytest.skip(f"no second name of 127.0.0.1 here ({other_name})")
    engine = make_engine(servers.mariadb.tls_url(database, host=other_name), pool_size=1)
    try:
        with pytest.raises(sqlalchemy.exc.OperationalError, match=r"match|mismatch|CERTIFICATE_VERIFY_FAILED"):
            _cipher(engine)
    finally:
        engine.dispose()


def test_redis_clients_connect_over_tls_and_a_wrong_ca_fails_closed(servers: TlsServers):
    client = sync_client(servers.redis.tls_url(), socket_timeout=2)
    assert client.ping()
    client.close()

    async def ping(url: str) -> bool:
        aclient = async_client(url, socket_timeout=2)
        try:
            return await aclient.ping()
        finally:
            await aclient.aclose()

    assert asyncio.run(ping(servers.redis.tls_url()))
    wrong = servers.redis.tls_url(ca=servers.other_ca.ca)
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        sync_client(wrong, socket_timeout=2).ping()
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        asyncio.run(ping(wrong))


def test_the_system_serves_over_tls_and_answers_503_when_the_database_ca_is_wrong(servers: TlsServers):
    root = LOG_ROOT / f"tls-system-{uuid.uuid4().hex[:8]}"
    name = f"cs_tlss_{uuid.uuid4().hex[:10]}"
    namespace = Namespace.create("tls", database_url=servers.mariadb.tls_url(name), redis_url=servers.redis.tls_url())
    system = System(namespace, root / "good", api_workers=1).start()
    try:
        api = Api(system.base_url)
        token = api.first_message_stored("over tls", "hello over tls")  # written by the writers, over TLS
    finally:
        system.stop()

    wrong = Namespace(namespace.name, namespace.settings)
    env = {"DATABASE_URL": servers.mariadb.tls_url(name, ca=servers.other_ca.ca)}
    system = System(wrong, root / "wrong-ca", api_workers=1, extra_env=env).start(wait_ready=False)
    try:
        api = Api(system.base_url)

        def answered() -> bool:
            try:
                return api.get(f"/applications/{token}").status_code != 0
            except Exception:
                return False

        wait_for(answered, 60, what="the API to answer")
        resp = api.get(f"/applications/{token}")
        assert resp.status_code == 503, resp.text
        assert resp.headers.get("Retry-After")
    finally:
        system.stop()
        namespace.destroy()
