"""Private MariaDB, Redis and RabbitMQ instances, started from the machine's server binaries, for chaos tests.

Each is a :class:`~chat_devtools.private_process.PrivateProcess`: its own ports, data directory and credentials,
its own process group, so a test can SIGKILL and restart it without disturbing the shared services on
3306/6379/5672 or anybody else. Redis keeps nothing on disk: a restart loses every key, as the chaos scenario
wants. A service this machine cannot run (Elasticsearch) is faulted through a :class:`chat_devtools.tcp.TcpProxy`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pymysql
import redis

from chat_devtools.private_process import PrivateProcess, missing_binary
from chat_devtools.rabbit_cluster import RABBITMQ_SERVER, RabbitNode
from chat_devtools.redis_process import REDIS_SERVER

MARIADBD = "/usr/sbin/mariadbd"
MARIADB_INSTALL_DB = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"


def unavailable_reason() -> str | None:
    """Why this machine cannot start a private MariaDB, Redis and RabbitMQ (the chaos suite skips with it)."""
    return missing_binary(
        (MARIADBD, MARIADB_INSTALL_DB, REDIS_SERVER, RABBITMQ_SERVER),
        "apt-get install mariadb-server redis-server rabbitmq-server",
    )


def mariadb_unavailable_reason() -> str | None:
    """Why this machine cannot start a private MariaDB (primary and replica tests skip with it)."""
    return missing_binary((MARIADBD, MARIADB_INSTALL_DB), "apt-get install mariadb-server")


class PrivateService(PrivateProcess):
    """A private server of one test session: ``<root>/<name>``, with a password of its own."""

    def __init__(self, root: Path) -> None:
        super().__init__(root / self.name)
        self.password = secrets.token_urlsafe(18)

    @property
    def url(self) -> str:
        """Its URL with credentials, as the system's settings take it."""
        raise NotImplementedError


class PrivateMariaDB(PrivateService):
    """``mariadbd`` with a fresh data directory and a password-protected user."""

    name = "mariadb"
    user = "chaos"

    def prepare(self) -> None:
        subprocess.run(
            [
                MARIADB_INSTALL_DB,
                "--no-defaults",
                f"--datadir={self.dir / 'data'}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--user=" + os.environ.get("USER", "root"),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def argv(self) -> list[str]:
        return [
            MARIADBD,
            "--no-defaults",
            f"--datadir={self.dir / 'data'}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--socket={self.dir / 'mysqld.sock'}",
            f"--pid-file={self.dir / 'mysqld.pid'}",
            f"--log-error={self.log_path}",
            "--user=" + os.environ.get("USER", "root"),
            "--skip-name-resolve",
            *self.replication_args(),
            "--innodb-buffer-pool-size=64M",
            "--max-connections=300",
        ]

    def replication_args(self) -> list[str]:
        """Binary log and server id (a standalone server keeps no binary log)."""
        return ["--skip-log-bin"]

    def _connect(self, user: str = "root", password: str = "") -> pymysql.Connection:
        return pymysql.connect(host="127.0.0.1", port=self.port, user=user, password=password, connect_timeout=2)

    def ping(self) -> bool:
        self._connect().close()
        return True

    def after_first_start(self) -> None:
        connection = self._connect()
        try:
            with connection.cursor() as cursor:
                for host in ("127.0.0.1", "localhost"):
                    cursor.execute(f"CREATE USER '{self.user}'@'{host}' IDENTIFIED BY %s", (self.password,))
                    cursor.execute(f"GRANT ALL PRIVILEGES ON *.* TO '{self.user}'@'{host}'")
        finally:
            connection.close()

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the server (no database: add one with ``.set(database=…)``)."""
        return f"mysql+pymysql://{self.user}:{self.password}@127.0.0.1:{self.port}/?charset=utf8mb4"

    def sql(self, *statements: str) -> list[dict]:
        """Run statements as root; the rows of the last one, as dicts."""
        connection = self._connect()
        try:
            with connection.cursor(pymysql.cursors.DictCursor) as cursor:
                for statement in statements:
                    cursor.execute(statement)
                rows = list(cursor.fetchall())
            connection.commit()
            return rows
        finally:
            connection.close()

    def status(self, variable: str) -> int:
        """A global status counter (e.g. ``Threads_connected``), read as root."""
        return int(self.sql(f"SHOW GLOBAL STATUS LIKE '{variable}'")[0]["Value"])


class ReplicationPrimary(PrivateMariaDB):
    """A private MariaDB that writes a row-based binary log with GTIDs, for a :class:`ReplicationReplica`."""

    name = "mariadb-primary"
    server_id = 1

    def replication_args(self) -> list[str]:
        return [f"--server-id={self.server_id}", "--log-bin=binlog", "--binlog-format=ROW"]

    def gtid_position(self) -> str:
        """The primary's current GTID position (where a new replica starts)."""
        connection = self._connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT @@gtid_binlog_pos")
                return cursor.fetchone()[0]
        finally:
            connection.close()


class ReplicationReplica(PrivateMariaDB):
    """A private MariaDB replicating a :class:`ReplicationPrimary` (GTID, asynchronous, as a managed replica is)."""

    name = "mariadb-replica"
    server_id = 2

    def replication_args(self) -> list[str]:
        return [f"--server-id={self.server_id}", "--skip-log-bin"]

    def follow(self, primary: ReplicationPrimary) -> None:
        """Replicate ``primary`` from its current position (each server's own users stay its own)."""
        self.sql(
            f"SET GLOBAL gtid_slave_pos = '{primary.gtid_position()}'",
            f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={primary.port}, MASTER_USER='{primary.user}', "
            f"MASTER_PASSWORD='{primary.password}', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1",
            "START SLAVE",
        )

    def replication_status(self) -> dict:
        """``SHOW REPLICA STATUS`` as a dict (empty when not replicating at all)."""
        rows = self.sql("SHOW REPLICA STATUS")
        return rows[0] if rows else {}


class PrivateRedis(PrivateService):
    """``redis-server`` without persistence, behind a password."""

    name = "redis"
    boot_timeout = 20.0

    def argv(self) -> list[str]:
        return [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            "--logfile", str(self.log_path),
            "--requirepass", self.password,
        ]  # fmt: skip

    def ping(self) -> bool:
        client = redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def info(self, field: str) -> int:
        """One field of ``INFO`` (e.g. ``connected_clients``)."""
        client = redis.Redis.from_url(self.url, socket_timeout=2)
        try:
            return int(client.info()[field])
        finally:
            client.close()


class TlsMariaDB(PrivateMariaDB):
    """A private MariaDB that accepts TLS connections only (``require_secure_transport``), with ``certificates``'
    server certificate (for ``localhost`` / 127.0.0.1)."""

    name = "mariadb-tls"

    def __init__(self, root: Path, certificates) -> None:
        super().__init__(root)
        self.certificates = certificates

    def replication_args(self) -> list[str]:
        tls = self.certificates
        return [
            "--skip-log-bin",
            f"--ssl-ca={tls.ca}",
            f"--ssl-cert={tls.cert}",
            f"--ssl-key={tls.key}",
            "--require-secure-transport=ON",
        ]

    def _connect(self, user: str = "root", password: str = "") -> pymysql.Connection:
        return pymysql.connect(
            host="127.0.0.1",
            port=self.port,
            user=user,
            password=password,
            connect_timeout=2,
            ssl={"ca": str(self.certificates.ca), "check_hostname": False},
        )

    def tls_url(self, database: str, ca: Path | None = None, host: str = "localhost") -> str:
        """SQLAlchemy URL of ``database`` with the CA to verify the server with (``ssl_ca``)."""
        ca = ca or self.certificates.ca
        return f"mysql+pymysql://{self.user}:{self.password}@{host}:{self.port}/{database}?charset=utf8mb4&ssl_ca={ca}"


class TlsRedis(PrivateRedis):
    """A private ``redis-server`` that listens for TLS only (``--port 0 --tls-port``)."""

    name = "redis-tls"

    def __init__(self, root: Path, certificates) -> None:
        super().__init__(root)
        self.certificates = certificates

    def argv(self) -> list[str]:
        tls = self.certificates
        plain = super().argv()
        plain[plain.index("--port") + 1] = "0"
        return [
            *plain,
            "--tls-port", str(self.port),
            "--tls-cert-file", str(tls.cert),
            "--tls-key-file", str(tls.key),
            "--tls-ca-cert-file", str(tls.ca),
            "--tls-auth-clients", "no",
        ]  # fmt: skip

    def tls_url(self, ca: Path | None = None, host: str = "localhost") -> str:
        """``rediss://`` URL of the server with the CA to verify it with (redis-py's ``ssl_ca_certs``)."""
        return f"rediss://:{self.password}@{host}:{self.port}/0?ssl_ca_certs={ca or self.certificates.ca}"

    @property
    def url(self) -> str:
        return self.tls_url()


class PrivateRabbitMQ(RabbitNode):
    """A RabbitMQ node of its own, alone (node name, AMQP and distribution ports, Mnesia and log dirs, cookie)."""

    name = "rabbitmq"

    def __init__(self, root: Path) -> None:
        super().__init__(
            root / self.name,
            f"chaos{secrets.token_hex(3)}@localhost",
            cookie=secrets.token_hex(16).upper(),
            user="chaos",
            password=secrets.token_urlsafe(18),
        )

    def start(self, wait: bool = True) -> PrivateRabbitMQ:
        """Start the node; with ``wait``, until it answers (as every other private service does)."""
        super().start(wait)
        return self


class PrivateServices:
    """MariaDB, Redis and RabbitMQ of one test session, under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mariadb = PrivateMariaDB(root)
        self.redis = PrivateRedis(root)
        self.rabbitmq = PrivateRabbitMQ(root)

    @property
    def all(self) -> tuple[PrivateProcess, ...]:
        return (self.mariadb, self.redis, self.rabbitmq)

    def start(self) -> PrivateServices:
        for service in self.all:
            service.start(wait=False)
        for service in self.all:
            service.wait_ready()
            service.provision()
        return self

    def ensure_running(self) -> None:
        """Restart whatever a failed scenario left down, so the next one starts from a healthy system."""
        for service in self.all:
            if not service.running:
                service.start()

    def stop(self) -> None:
        for service in self.all:
            service.stop()
