"""A RabbitMQ cluster on loopback: private nodes (own node names, ports, data dirs, Erlang cookie) joined together.

Tests and benchmarks use it to run the system against several broker nodes on one machine without touching the
shared broker on 5672: every node gets its own ``RABBITMQ_NODENAME``, AMQP and distribution ports, Mnesia and log
directories and a cookie of the cluster's own, and runs in a process group of its own so that :meth:`RabbitNode.kill`
is a real crash (SIGKILL of the Erlang VM) that leaves the other nodes alone. Nodes 2… join node 1 with
``rabbitmqctl --erlang-cookie … join_cluster``, as an operator would.

:class:`TcpBalancer` is a tiny asyncio TCP load balancer in front of the nodes, like a Kubernetes Service: one
address, connections spread round-robin over the nodes that accept them (a dead node is skipped).

Run it by hand (``python -m chat_devtools.rabbit_cluster``) to get a cluster and its URLs until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pika
import pika.exceptions

from chat_common.broker import ConnectionProfile, node_parameters

SBIN_PATH = "/usr/lib/rabbitmq/bin:/usr/sbin:/usr/bin"
RABBITMQ_SERVER = shutil.which("rabbitmq-server", path=SBIN_PATH) or "/usr/sbin/rabbitmq-server"
RABBITMQCTL = shutil.which("rabbitmqctl", path=SBIN_PATH) or "/usr/sbin/rabbitmqctl"
DEAD_LETTER_CONFIRM_TIMEOUT_MS = 5000
PING = ConnectionProfile(socket_timeout=2)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unavailable_reason() -> str | None:
    """Why this machine cannot start private RabbitMQ nodes, or None when it can (tests skip with the reason)."""
    for binary in (RABBITMQ_SERVER, RABBITMQCTL):
        if not os.access(binary, os.X_OK):
            return f"{binary} is not installed (apt-get install rabbitmq-server)"
    return None


class LoopbackCertificates:
    """A CA of its own and a server certificate it signed for ``localhost`` / 127.0.0.1 (openssl command line)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = directory / "ca.pem"
        self.cert = directory / "server.pem"
        self.key = directory / "server.key"
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        ca_key = directory / "ca.key"
        subprocess.run(
            ["openssl", "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(self.ca), "-days", "2",
             "-subj", "/CN=chat-system test CA"],
            check=True, capture_output=True,
        )  # fmt: skip
        request = directory / "server.csr"
        subprocess.run(
            ["openssl", "req", "-new", *ec, "-keyout", str(self.key), "-out", str(request), "-subj", "/CN=localhost"],
            check=True, capture_output=True,
        )  # fmt: skip
        names = directory / "san.cnf"
        names.write_text("subjectAltName = DNS:localhost, IP:127.0.0.1\n")
        subprocess.run(
            ["openssl", "x509", "-req", "-in", str(request), "-CA", str(self.ca), "-CAkey", str(ca_key),
             "-CAcreateserial", "-out", str(self.cert), "-days", "2", "-extfile", str(names)],
            check=True, capture_output=True,
        )  # fmt: skip
        self.key.chmod(0o644)  # the broker runs as this user; readable is enough


class RabbitNode:
    """One private RabbitMQ node: start, SIGKILL, restart with its data, ``rabbitmqctl`` against it."""

    boot_timeout = 120.0

    def __init__(
        self,
        root: Path,
        index: int,
        *,
        cookie: str,
        user: str,
        password: str,
        tag: str,
        tls: LoopbackCertificates | None = None,
    ) -> None:
        self.index = index
        self.dir = root / f"node{index}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tls = tls
        self.tls_port = free_port() if tls else None  # an amqps:// listener besides the plain one
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"{tag}n{index}@localhost"
        self.cookie = cookie
        self.user = user
        self.password = password
        self.log_path = self.dir / "server.log"
        self.popen: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """AMQP URL of this node alone."""
        return f"amqp://{self.user}:{self.password}@127.0.0.1:{self.port}/%2F"

    def tls_url(self, host: str = "localhost") -> str:
        """``amqps://`` URL of this node's TLS listener, by ``host`` (its certificate names localhost and 127.0.0.1)."""
        assert self.tls_port is not None, "a node started without tls"
        return f"amqps://{self.user}:{self.password}@{host}:{self.tls_port}/%2F"

    def _prepare(self) -> None:
        d = self.dir
        (d / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            f"default_user = {self.user}\n"
            f"default_pass = {self.password}\n"
            "loopback_users = none\n"
            "log.console = false\n"
            "log.file.level = info\n"
            "disk_free_limit.absolute = 50MB\n"
            # Shorter than the default 60 s, so a crashed peer is noticed quickly (Raft elects a new leader anyway).
            "net_ticktime = 10\n"
            + (
                f"listeners.ssl.default = 127.0.0.1:{self.tls_port}\n"
                f"ssl_options.cacertfile = {self.tls.ca}\n"
                f"ssl_options.certfile = {self.tls.cert}\n"
                f"ssl_options.keyfile = {self.tls.key}\n"
                "ssl_options.verify = verify_none\n"
                "ssl_options.fail_if_no_peer_cert = false\n"
                if self.tls
                else ""
            )
        )
        (d / "enabled_plugins").write_text("[].\n")
        (d / "rabbitmq-env.conf").write_text("")
        # At-least-once dead-lettering (chat_common.topology) resends a message its target queue did not confirm
        # after this long; the default is 3 minutes, which would make a test wait for minutes after a target
        # queue's outage. The chart sets it too (values: rabbitmq.deadLetterConfirmTimeoutSeconds).
        (d / "advanced.config").write_text(
            f"[{{rabbit, [{{dead_letter_worker_publisher_confirm_timeout, {DEAD_LETTER_CONFIRM_TIMEOUT_MS}}}]}}].\n"
        )
        cookie = d / ".erlang.cookie"  # HOME is this directory: the node and its CLI calls read the cookie here
        cookie.write_text(self.cookie)
        cookie.chmod(0o400)

    def environ(self) -> dict[str, str]:
        """The node's environment: nothing of /etc/rabbitmq or of the shared node leaks in."""
        d = self.dir
        return {
            **os.environ,
            "HOME": str(d),
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
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

    def start(self) -> RabbitNode:
        """Start the node (its data directory is kept across restarts); returns at once, see :meth:`wait_ready`."""
        if not (self.dir / "rabbitmq.conf").exists():
            self._prepare()
        with self.log_path.open("ab") as log:
            # A process group of its own: a kill reaches the wrapper script's children, and nothing else.
            self.popen = subprocess.Popen(
                [RABBITMQ_SERVER], env=self.environ(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def ping(self) -> bool:
        """True when the node accepts an AMQP connection."""
        try:
            pika.BlockingConnection(node_parameters(self.url, PING)).close()
        except (pika.exceptions.AMQPError, OSError):
            return False
        return True

    def wait_ready(self, timeout: float | None = None) -> float:
        """Seconds until the node answered AMQP; raises when it died or took longer than its boot timeout."""
        started = time.monotonic()
        deadline = started + (timeout or self.boot_timeout)
        while time.monotonic() < deadline:
            if self.popen is not None and self.popen.poll() is not None:
                raise RuntimeError(f"{self.node} exited with {self.popen.returncode}; see {self.dir / 'log'}")
            if self.ping():
                return time.monotonic() - started
            time.sleep(0.2)
        raise TimeoutError(f"{self.node} did not answer in time; see {self.dir / 'log'}")

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """``rabbitmqctl -n <node> --erlang-cookie <cookie> …``; its stdout (raises on failure)."""
        done = subprocess.run(
            [RABBITMQCTL, "-n", self.node, "--erlang-cookie", self.cookie, *args],
            env=self.environ(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {self.node} failed: {done.stderr or done.stdout}")
        return done.stdout

    def signal(self, sig: int, timeout: float = 60) -> None:
        """Signal the node's process group and wait until it exited (SIGKILL after ``timeout``)."""
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

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed, no goodbye to the peers."""
        self.signal(signal.SIGKILL)

    def stop(self) -> None:
        """A clean shutdown."""
        self.signal(signal.SIGTERM)

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def beam_pid(self) -> int | None:
        """PID of the Erlang VM (``beam.smp``), for measuring the node's CPU."""
        pid_file = self.dir / "beam.pid"
        if not self.running or not pid_file.exists():
            return None
        text = pid_file.read_text().strip()
        return int(text) if text.isdigit() else None


class RabbitCluster:
    """``size`` private nodes joined into one cluster (``size=1``: a single private node, for comparisons)."""

    def __init__(self, root: Path | None = None, size: int = 3, tls: bool = False) -> None:
        """``tls``: every node also listens for ``amqps://`` with a certificate of a CA made for the cluster
        (:attr:`certificates`)."""
        self._tmp = None
        if root is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="rabbit-cluster-")
            root = Path(self._tmp.name)
        self.root = root
        tag = secrets.token_hex(3)
        cookie = secrets.token_hex(16).upper()
        user, password = "cluster", secrets.token_urlsafe(12)
        self.certificates = LoopbackCertificates(root / "tls") if tls else None
        self.nodes = [
            RabbitNode(root, i + 1, cookie=cookie, user=user, password=password, tag=tag, tls=self.certificates)
            for i in range(size)
        ]
        self.balancer: TcpBalancer | None = None

    @property
    def urls(self) -> str:
        """Every node's URL, comma-separated: the ``RABBITMQ_URL`` form that lists several nodes."""
        return ",".join(node.url for node in self.nodes)

    @property
    def balanced_url(self) -> str:
        """One address in front of every node (start the balancer with :meth:`start_balancer` first)."""
        assert self.balancer is not None, "start_balancer() first"
        first = self.nodes[0]
        return f"amqp://{first.user}:{first.password}@127.0.0.1:{self.balancer.port}/%2F"

    def start(self) -> RabbitCluster:
        """Boot every node (in parallel), then join nodes 2… to node 1; returns when the cluster is formed."""
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            node.wait_ready()
        seed = self.nodes[0]
        for node in self.nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", seed.node)
            node.ctl("start_app")
        for node in self.nodes:
            node.wait_ready()
        if len(self.nodes) > 1:
            running = self.running_nodes()
            missing = {n.node for n in self.nodes} - set(running)
            if missing:
                raise RuntimeError(f"nodes {sorted(missing)} did not join the cluster (running: {running})")
        return self

    def start_balancer(self) -> TcpBalancer:
        """A TCP load balancer in front of the nodes (a Kubernetes Service's role)."""
        if self.balancer is None:
            self.balancer = TcpBalancer([("127.0.0.1", node.port) for node in self.nodes]).start()
        return self.balancer

    def alive(self) -> RabbitNode:
        """Some running node (for ``rabbitmqctl`` calls)."""
        for node in self.nodes:
            if node.running and node.ping():
                return node
        raise RuntimeError("no node of the cluster is running")

    def running_nodes(self) -> list[str]:
        """Node names the cluster reports as running."""
        status = json.loads(self.alive().ctl("cluster_status", "--formatter", "json"))
        return list(status.get("running_nodes", []))

    def queues(self) -> list[dict]:
        """``list_queues`` with name, type, leader, members and message count, as seen from a running node."""
        out = self.alive().ctl(
            "list_queues", "name", "type", "leader", "members", "messages", "--formatter", "json", "-q"
        )
        return json.loads(out or "[]")

    def leader_of(self, queue: str) -> RabbitNode:
        """The node that leads a quorum queue (or hosts a classic one)."""
        for row in self.queues():
            if row["name"] == queue:
                leader = row.get("leader") or row.get("node")
                for node in self.nodes:
                    if node.node == leader:
                        return node
                raise RuntimeError(f"queue {queue} is led by {leader}, not a node of this cluster")
        raise LookupError(f"no queue named {queue}")

    def node_by_name(self, name: str) -> RabbitNode:
        return next(node for node in self.nodes if node.node == name)

    def stop(self) -> None:
        """Stop the balancer and every node (SIGTERM, SIGKILL after a while), then remove a temporary root."""
        if self.balancer is not None:
            self.balancer.close()
        for node in reversed(self.nodes):
            node.signal(signal.SIGTERM, timeout=30)
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> RabbitCluster:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


class TcpBalancer:
    """Round-robin TCP forwarding to the first backend that accepts, on an asyncio loop of its own thread.

    A Kubernetes Service spreads connections over the ready pods; a pod that died stops receiving new ones.
    Here a backend that refuses the connection is skipped, and connections to a backend that dies are cut.
    """

    def __init__(self, backends: Sequence[tuple[str, int]], connect_timeout: float = 2.0) -> None:
        self.backends = list(backends)
        self.connect_timeout = connect_timeout
        self.port = free_port()
        self._next = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="tcp-balancer", daemon=True)
        self._tasks: set[asyncio.Task] = set()

    def start(self) -> TcpBalancer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("balancer did not start")
        return self

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        )
        self._ready.set()
        self._loop.run_forever()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            upstream = await self._connect_any()
            if upstream is None:
                writer.close()
                return
            up_reader, up_writer = upstream
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._tasks.discard(task)

    async def _connect_any(self):
        for _ in range(len(self.backends)):
            host, port = self.backends[self._next % len(self.backends)]
            self._next += 1
            try:
                return await asyncio.wait_for(asyncio.open_connection(host, port), self.connect_timeout)
            except (OSError, TimeoutError):
                continue
        return None

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def close(self) -> None:
        """Stop accepting and cut every forwarded connection."""

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


def main() -> None:
    """Start a 3-node cluster with a balancer in front, print its URLs, stop it on Ctrl-C."""
    with RabbitCluster() as cluster:
        cluster.start_balancer()
        print(f"RABBITMQ_URL={cluster.urls}")
        print(f"balanced: {cluster.balanced_url}")
        print("Ctrl-C stops the cluster", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
