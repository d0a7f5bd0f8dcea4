"""Redis Sentinel on loopback: one master, its replicas and three sentinels, all private (own ports and temp dirs).

Tests start one to run the system against ``redis+sentinel://…`` without touching the shared Redis on 6379.
Data servers keep nothing on disk (``--save "" --appendonly no``): a SIGKILLed master is gone with what it held
in memory, and only what its replicas received survives — the case ``REDIS_REPLICAS_TO_ACK`` protects numbers
against. Sentinels use small ``down-after-milliseconds`` / ``failover-timeout`` so a failover takes about a second
on loopback instead of the default 30 s + 3 min. Each sentinel rewrites its own config file (in its directory), as
a sentinel does.

Run it by hand (``python -m chat_devtools.redis_sentinel``) to get one and its ``REDIS_URL`` until Ctrl-C.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import time
from pathlib import Path

import redis

from chat_devtools.ports import free_port
from chat_devtools.private_process import missing_binary
from chat_devtools.redis_process import REDIS_SERVER, RedisProcess

SERVICE = "chat"


def unavailable_reason() -> str | None:
    """Why this machine cannot start private Redis servers and sentinels, or None when it can."""
    return missing_binary((REDIS_SERVER,), "apt-get install redis-server; it runs sentinels too")


class Server(RedisProcess):
    """One private ``redis-server`` (data server or, with ``sentinel=True``, a sentinel) in its own directory."""

    def __init__(self, root: Path, name: str, config: list[str], sentinel: bool = False) -> None:
        super().__init__(root / name, free_port(), name)
        self.config = config
        self.sentinel = sentinel

    def argv(self) -> list[str]:
        """Its config file (written at first start; a sentinel keeps what it learned, rewritten, on restart)."""
        lines = [f"port {self.port}", "bind 127.0.0.1", f"dir {self.dir}", "logfile server.log", *self.config]
        conf = self.dir / "redis.conf"
        if not (self.sentinel and conf.exists()):
            conf.write_text("\n".join(lines) + "\n")
        return [REDIS_SERVER, str(conf)] + (["--sentinel"] if self.sentinel else [])


class RedisSentinel:
    """A master, ``replicas`` replicas and ``sentinels`` sentinels (quorum 2); stop() removes everything."""

    def __init__(
        self, replicas: int = 2, sentinels: int = 3, down_after_ms: int = 500, failover_timeout_ms: int = 2000
    ) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="redis-sentinel-"))
        no_disk = ['save ""', "appendonly no"]
        self.master = Server(self.root, "data0", no_disk)
        self.data = [self.master]
        for i in range(1, replicas + 1):
            self.data.append(Server(self.root, f"data{i}", [*no_disk, f"replicaof 127.0.0.1 {self.master.port}"]))
        monitor = [
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} {min(2, sentinels)}",
            f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}",
            f"sentinel failover-timeout {SERVICE} {failover_timeout_ms}",
            f"sentinel parallel-syncs {SERVICE} {max(1, replicas)}",
        ]
        self.sentinels = [Server(self.root, f"sentinel{i}", monitor, sentinel=True) for i in range(sentinels)]

    @property
    def url(self) -> str:
        """``REDIS_URL`` of the deployment (every sentinel listed; the client needs one that answers)."""
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels) + f"/{SERVICE}"

    def start(self, timeout: float = 30) -> RedisSentinel:
        """Start the data servers, then the sentinels, and wait until the sentinels agree on a healthy master."""
        try:
            for server in (*self.data, *self.sentinels):
                server.start()
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def current_master(self) -> Server:
        """The data server the (first answering) sentinel names as master now."""
        for sentinel in self.sentinels:
            if not sentinel.running:
                continue
            try:
                _host, port = sentinel.client().execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
            except (redis.RedisError, TypeError, ValueError):
                continue
            return next(s for s in self.data if s.port == int(port))
        raise LookupError("no sentinel answers")

    def wait_healthy(self, timeout: float = 30) -> None:
        """Until every sentinel names the same live master, which has every other live server as replica in
        sync, and the sentinels know of each other and of those replicas (so a failover can happen)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self._healthy():
                    return
            except (redis.RedisError, LookupError, StopIteration):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"redis sentinel deployment not healthy; logs under {self.root}")

    def _healthy(self) -> bool:
        live = [s for s in self.data if s.running]
        ports = set()
        for sentinel in self.sentinels:
            client = sentinel.client()
            try:
                master = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
                ports.add(int(master[1]))
                info = client.sentinel_master(SERVICE)
                if info.get("num-other-sentinels", 0) < len(self.sentinels) - 1:
                    return False
                if info.get("num-slaves", 0) < len(live) - 1 or info.get("is_odown") or info.get("is_sdown"):
                    return False
            finally:
                client.close()
        if len(ports) != 1:
            return False
        master = next(s for s in self.data if s.port == ports.pop())
        if not master.running:
            return False
        replication = master.client().info("replication")
        in_sync = sum(1 for key, value in replication.items() if key.startswith("slave") and isinstance(value, dict)
                      and value.get("state") == "online")  # fmt: skip
        return replication["role"] == "master" and in_sync >= len(live) - 1

    def stop(self) -> None:
        """Stop every server and sentinel and delete their directories."""
        for server in (*self.sentinels, *self.data):
            server.stop()
        shutil.rmtree(self.root, ignore_errors=True)


if __name__ == "__main__":
    deployment = RedisSentinel().start()
    print(f"REDIS_URL={deployment.url}", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        deployment.stop()
