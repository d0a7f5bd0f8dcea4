"""Private MariaDB, Redis and RabbitMQ instances, started from the machine's server binaries, for chaos tests.

Each runs on its own ports with its own data directory and credentials, in its own process group, so a test
can SIGKILL and restart it without disturbing the shared services on 3306/6379/5672 or anybody else. Redis
keeps nothing on disk: a restart loses every key, as the chaos scenario wants. A :class:`TcpProxy` in front
of a service this machine cannot run (Elasticsearch) makes it unavailable on demand instead.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pika
import pymysql
import redis

from chat_common.broker import node_parameters
from chat_devtools.rabbit_cluster import PING
from tests.support.processes import free_port

MARIADBD = "/usr/sbin/mariadbd"
MARIADB_INSTALL_DB = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
RABBITMQ_SERVER = shutil.which("rabbitmq-server", path="/usr/lib/rabbitmq/bin:/usr/sbin") or "/usr/sbin/rabbitmq-server"


def missing_binaries() -> list[str]:
    """Server binaries this machine lacks (the chaos suite skips, naming them)."""
    return [b for b in (MARIADBD, MARIADB_INSTALL_DB, REDIS_SERVER, RABBITMQ_SERVER) if not os.access(b, os.X_OK)]


class PrivateService:
    """One server process of ours: start, SIGKILL (a crash), SIGTERM (a clean stop), wait until it answers."""

    name = "service"
    boot_timeout = 60.0

    def __init__(self, root: Path) -> None:
        self.dir = root / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = secrets.token_urlsafe(18)
        self.log_path = self.dir / "server.log"
        self.popen: subprocess.Popen | None = None

    # -- to override -------------------------------------------------------------------------------------------
    def argv(self) -> list[str]:
        raise NotImplementedError

    def environ(self) -> dict[str, str]:
        return dict(os.environ)

    def prepare(self) -> None:
        """One-time setup before the first start (data directory, config files)."""

    def ping(self) -> bool:
        raise NotImplementedError

    def after_first_start(self) -> None:
        """One-time setup once the server answers (users, grants)."""

    @property
    def url(self) -> str:
        raise NotImplementedError

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self, wait: bool = True) -> PrivateService:
        """Start the server (preparing its directory the first time); with ``wait``, until it answers."""
        if not (self.dir / ".prepared").exists():
            self.prepare()
            (self.dir / ".prepared").touch()
        log = self.log_path.open("ab")
        # A process group of its own: a kill reaches the wrapper scripts' children, and nothing else.
        self.popen = subprocess.Popen(
            self.argv(), env=self.environ(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        if wait:
            self.wait_ready()
            self.provision()
        return self

    def provision(self) -> None:
        """Run :meth:`after_first_start` once in the life of the data directory."""
        if not (self.dir / ".provisioned").exists():
            self.after_first_start()
            (self.dir / ".provisioned").touch()

    def wait_ready(self, timeout: float | None = None) -> float:
        """Seconds until the server answered; raises when it died or took longer than its boot timeout."""
        started = time.monotonic()
        deadline = started + (timeout or self.boot_timeout)
        while time.monotonic() < deadline:
            if self.popen is not None and self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}; see {self.log_path}")
            with contextlib.suppress(Exception):
                if self.ping():
                    return time.monotonic() - started
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} did not answer in time; see {self.log_path}")

    def signal(self, sig: int, timeout: float = 60) -> None:
        """Signal our process group and wait for the server to exit (SIGKILL after ``timeout``)."""
        if self.popen is None or self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)
        self._wait_port_free()

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed, nothing said goodbye."""
        self.signal(signal.SIGKILL)

    def stop(self) -> None:
        """A clean shutdown."""
        self.signal(signal.SIGTERM)

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def server_pid(self) -> int | None:
        """PID of the server process itself (not of a wrapper script), for sampling its resources."""
        return self.popen.pid if self.running else None

    def _wait_port_free(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.1)


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


class PrivateRabbitMQ(PrivateService):
    """A RabbitMQ node of its own: node name, AMQP and distribution ports, Mnesia and log dirs, Erlang cookie."""

    name = "rabbitmq"
    boot_timeout = 120.0
    user = "chaos"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.dist_port = free_port()
        self.node = f"chaos{self.port}@localhost"

    def prepare(self) -> None:
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            f"default_user = {self.user}\n"
            f"default_pass = {self.password}\n"
            "loopback_users = none\n"
            "log.console = false\n"
            "log.file.level = info\n"
            "disk_free_limit.absolute = 50MB\n"
        )
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq-env.conf").write_text("")

    def environ(self) -> dict[str, str]:
        d = self.dir
        return {
            **os.environ,
            "HOME": str(d),  # the Erlang cookie lives here, not in the invoking user's home
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),  # not /etc/rabbitmq's
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_PID_FILE": str(d / "beam.pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def argv(self) -> list[str]:
        return [RABBITMQ_SERVER]

    def ping(self) -> bool:
        pika.BlockingConnection(node_parameters(self.url, PING)).close()
        return True

    @property
    def url(self) -> str:
        return f"amqp://{self.user}:{self.password}@127.0.0.1:{self.port}/%2F"

    @property
    def server_pid(self) -> int | None:
        """The Erlang VM (``beam.smp``), which the wrapper scripts start as a child."""
        pid_file = self.dir / "beam.pid"
        if not self.running or not pid_file.exists():
            return None
        return int(pid_file.read_text().strip() or 0) or None


class PrivateServices:
    """MariaDB, Redis and RabbitMQ of one test session, under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mariadb = PrivateMariaDB(root)
        self.redis = PrivateRedis(root)
        self.rabbitmq = PrivateRabbitMQ(root)

    @property
    def all(self) -> tuple[PrivateService, ...]:
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


class TcpProxy:
    """A TCP forwarder whose :meth:`block` makes the target unreachable (resets connections, refuses new ones).

    With ``delay``, every chunk waits that long before it is forwarded: a slow network, under which a
    blocking call on an event loop stalls it for at least ``delay``.
    """

    def __init__(self, target_host: str, target_port: int, delay: float = 0.0) -> None:
        self.target = (target_host, target_port)
        self.delay = delay
        self.port = free_port()
        self.blocked = threading.Event()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="tcp-proxy", daemon=True).start()

    def block(self) -> None:
        """Cut every open connection and refuse new ones, as a crashed server would."""
        self.blocked.set()
        with self._lock:
            pairs, self._pairs = self._pairs, set()
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.close()

    def unblock(self) -> None:
        self.blocked.clear()

    def close(self) -> None:
        self._closed = True
        self.block()
        self._server.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self.blocked.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)  # the connect timeout must not cut an idle connection later
            pair = (client, upstream)
            with self._lock:
                self._pairs.add(pair)
            for source, sink in (pair, pair[::-1]):
                threading.Thread(target=self._pipe, args=(source, sink, pair), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, pair) -> None:
        try:
            while data := source.recv(65536):
                if self.delay:
                    time.sleep(self.delay)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._pairs.discard(pair)
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.close()
