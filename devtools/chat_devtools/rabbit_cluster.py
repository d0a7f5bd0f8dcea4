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

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pika
import pika.exceptions

from chat_common.clients.broker import ConnectionProfile, node_parameters
from chat_devtools.ports import free_port
from chat_devtools.private_process import PrivateProcess, missing_binary
from chat_devtools.tcp import TcpBalancer

SBIN_PATH = "/usr/lib/rabbitmq/bin:/usr/sbin:/usr/bin"
RABBITMQ_SERVER = shutil.which("rabbitmq-server", path=SBIN_PATH) or "/usr/sbin/rabbitmq-server"
RABBITMQCTL = shutil.which("rabbitmqctl", path=SBIN_PATH) or "/usr/sbin/rabbitmqctl"
DEAD_LETTER_CONFIRM_TIMEOUT_MS = 5000
PING = ConnectionProfile(socket_timeout=2)


def unavailable_reason() -> str | None:
    """Why this machine cannot start private RabbitMQ nodes, or None when it can (tests skip with the reason)."""
    return missing_binary((RABBITMQ_SERVER, RABBITMQCTL), "apt-get install rabbitmq-server")


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


class RabbitNode(PrivateProcess):
    """One private RabbitMQ node: start, SIGKILL, restart with its data, ``rabbitmqctl`` against it."""

    boot_timeout = 120.0

    def __init__(
        self,
        directory: Path,
        node: str,
        *,
        cookie: str,
        user: str,
        password: str,
        tls: LoopbackCertificates | None = None,
    ) -> None:
        self.tls = tls
        self.tls_port = free_port() if tls else None  # an amqps:// listener besides the plain one
        super().__init__(directory)
        self.dist_port = free_port()
        self.name = self.node = node
        self.cookie = cookie
        self.user = user
        self.password = password

    @property
    def url(self) -> str:
        """AMQP URL of this node alone."""
        return f"amqp://{self.user}:{self.password}@127.0.0.1:{self.port}/%2F"

    def tls_url(self, host: str = "localhost") -> str:
        """``amqps://`` URL of this node's TLS listener, by ``host`` (its certificate names localhost and 127.0.0.1)."""
        assert self.tls_port is not None, "a node started without tls"
        return f"amqps://{self.user}:{self.password}@{host}:{self.tls_port}/%2F"

    def prepare(self) -> None:
        """Its config files and the cluster's Erlang cookie."""
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
        # At-least-once dead-lettering (chat_common.wire.topology) resends a message its target queue did not confirm
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

    def argv(self) -> list[str]:
        """The broker's start script (it execs the Erlang VM, whose PID it writes to ``beam.pid``)."""
        return [RABBITMQ_SERVER]

    def start(self, wait: bool = False) -> RabbitNode:
        """Start the node (its data directory is kept across restarts); returns at once unless ``wait``, so that
        several nodes boot in parallel (see :meth:`wait_ready`)."""
        super().start(wait)
        return self

    def ping(self) -> bool:
        """True when the node accepts an AMQP connection."""
        try:
            pika.BlockingConnection(node_parameters(self.url, PING)).close()
        except (pika.exceptions.AMQPError, OSError):
            return False
        return True

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

    @property
    def server_pid(self) -> int | None:
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
            RabbitNode(
                root / f"node{i}",
                f"{tag}n{i}@localhost",
                cookie=cookie,
                user=user,
                password=password,
                tls=self.certificates,
            )
            for i in range(1, size + 1)
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
