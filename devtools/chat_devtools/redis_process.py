"""One private ``redis-server`` process on loopback: the part the Redis Cluster and Sentinel launchers share.

A :class:`~chat_devtools.private_process.PrivateProcess` started until it answers PING, that can be SIGKILLed
(losing what it held in memory) or stopped, and asked its replication role. Subclasses say how it is started
(:meth:`argv`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import redis

from chat_devtools.private_process import PrivateProcess

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisProcess(PrivateProcess):
    """A private ``redis-server`` in ``directory``, listening on 127.0.0.1:``port``."""

    boot_timeout = 20.0
    poll_interval = 0.05

    def __init__(self, directory: Path, port: int, name: str) -> None:
        super().__init__(directory, port)
        self.name = name

    def start(self, wait: bool = True) -> RedisProcess:
        """Start it (own process group) and wait until it answers PING; killed again when it does not."""
        try:
            super().start(wait)
        except (RuntimeError, TimeoutError) as exc:
            self.kill()
            raise TimeoutError(f"{self.name} on port {self.port} did not start; see {self.log_path}") from exc
        return self

    def ping(self) -> bool:
        """True when it answers PING."""
        client = self.client()
        try:
            return bool(client.ping())
        finally:
            client.close()

    def client(self) -> redis.Redis:
        """A plain client of this one server (no redirections followed)."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=1)

    def role(self) -> str:
        """ "master" or "slave", as the server itself says."""
        return self.client().info("replication")["role"]
