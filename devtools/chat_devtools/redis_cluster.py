"""A Redis Cluster on loopback: private ``redis-server`` nodes (own ports, data dirs, cluster config files).

Tests start one with 3 masters and 3 replicas (``redis-cli --cluster create … --cluster-replicas 1``) to run the
system against Redis Cluster without touching the shared Redis on 6379. Nodes keep nothing on disk
(``--save "" --appendonly no``): a node restarted after :meth:`RedisNode.kill` comes back empty, exactly the
"Redis lost its data" case, while its cluster config file (in its own directory) lets it rejoin with its slots.
``cluster-require-full-coverage no``: a shard that is down leaves the other shards serving, as a production
cluster should be configured for this system (per-slot recovery, see ``chat_api.numbering.recovery``).

Run it by hand (``python -m chat_devtools.redis_cluster``) to get a cluster and its ``REDIS_URL`` until Ctrl-C.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from chat_devtools.ports import free_port_with_bus
from chat_devtools.private_process import missing_binary
from chat_devtools.redis_process import REDIS_SERVER, RedisProcess

REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def unavailable_reason() -> str | None:
    """Why this machine cannot start private Redis nodes, or None when it can (tests skip with the reason)."""
    return missing_binary((REDIS_SERVER, REDIS_CLI), "apt-get install redis-server")


class RedisNode(RedisProcess):
    """One private ``redis-server`` in cluster mode: start, SIGKILL, restart (empty), ask it things."""

    def __init__(self, root: Path, port: int, node_timeout_ms: int) -> None:
        super().__init__(root / f"node{port}", port, f"redis-server (cluster node {port})")
        self.node_timeout_ms = node_timeout_ms

    def argv(self) -> list[str]:
        """Cluster mode, nothing kept on disk but the cluster config file."""
        return [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--cluster-require-full-coverage", "no",
            "--save", "",
            "--appendonly", "no",
            "--logfile", "server.log",
        ]  # fmt: skip


class RedisCluster:
    """``masters * (1 + replicas)`` private nodes joined into one cluster; stop() removes everything."""

    def __init__(self, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1000) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="redis-cluster-"))
        self.masters = masters
        self.replicas = replicas
        self.nodes = [
            RedisNode(self.root, free_port_with_bus(), node_timeout_ms) for _ in range(masters * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        """``REDIS_URL`` of the cluster (every node listed; the client needs only one that answers)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self, timeout: float = 60) -> RedisCluster:
        """Start every node, create the cluster, and wait until every slot is served."""
        try:
            for node in self.nodes:
                node.start()
            subprocess.run(
                [
                    REDIS_CLI,
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{n.port}" for n in self.nodes),
                    "--cluster-replicas",
                    str(self.replicas),
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_healthy(self, timeout: float = 60) -> None:
        """Until every live node says ``cluster_state:ok`` and each master has its replicas in sync."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if all(self._node_ok(node) for node in self.nodes if node.running):
                    return
            except redis.RedisError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"redis cluster not healthy; logs under {self.root}")

    def _node_ok(self, node: RedisNode) -> bool:
        client = node.client()
        try:
            info = client.execute_command("CLUSTER", "INFO").decode()
            if "cluster_state:ok" not in info:
                return False
            replication = client.info("replication")
            if replication["role"] == "master":
                return replication["connected_slaves"] >= self.replicas
            return replication.get("master_link_status") == "up"
        finally:
            client.close()

    def master_of(self, slot: int) -> RedisNode:
        """The node serving ``slot`` now (as the live nodes' CLUSTER SLOTS says)."""
        for node in self.nodes:
            if not node.running:
                continue
            try:
                for start, end, master, *_ in node.client().execute_command("CLUSTER", "SLOTS"):
                    if start <= slot <= end:
                        port = int(master[1])
                        return next(n for n in self.nodes if n.port == port)
            except redis.RedisError:
                continue
        raise LookupError(f"no live node knows slot {slot}")

    def replicas_of(self, master: RedisNode) -> list[RedisNode]:
        """The live nodes replicating ``master``."""
        found = []
        for node in self.nodes:
            if node is master or not node.running:
                continue
            info = node.client().info("replication")
            if info["role"] == "slave" and int(info["master_port"]) == master.port:
                found.append(node)
        return found

    def stop(self) -> None:
        """Stop every node and delete their directories."""
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)


if __name__ == "__main__":
    cluster = RedisCluster().start()
    print(f"REDIS_URL={cluster.url}", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
