"""One private ``redis-server`` process on loopback: the part the Redis Cluster and Sentinel launchers share.

Each runs in its own process group and directory, is started until it answers PING, can be SIGKILLed (losing what
it held in memory) or stopped, and asked its replication role. Subclasses say how it is started (:meth:`argv`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisProcess:
    """A private ``redis-server`` in ``directory``, listening on 127.0.0.1:``port``."""

    def __init__(self, directory: Path, port: int, name: str) -> None:
        self.port = port
        self.name = name
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.popen: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        """The command line that starts it (called at every start)."""
        raise NotImplementedError

    def start(self) -> RedisProcess:
        """Start it (own process group) and wait until it answers PING."""
        self.popen = subprocess.Popen(self.argv(), cwd=self.dir, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return self
            except redis.RedisError:
                if self.popen.poll() is not None:
                    break
                time.sleep(0.05)
        self.kill()
        raise TimeoutError(f"{self.name} on port {self.port} did not start; see {self.dir / 'server.log'}")

    def client(self) -> redis.Redis:
        """A plain client of this one server (no redirections followed)."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=1)

    def kill(self) -> None:
        """SIGKILL: the server dies with everything it held in memory."""
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def stop(self) -> None:
        """Stop it (nothing is on disk anyway)."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    @property
    def alive(self) -> bool:
        """Whether its process is running."""
        return self.popen is not None and self.popen.poll() is None

    def role(self) -> str:
        """ "master" or "slave", as the server itself says."""
        return self.client().info("replication")["role"]
