"""One private server process on loopback: the lifecycle every private MariaDB, Redis and RabbitMQ shares.

A private process has its own directory (data, config, ``server.log``) and ports, and runs in a process group of
its own, so that :meth:`PrivateProcess.kill` is a real crash (SIGKILL of the server and of the wrapper scripts'
children) that leaves the shared services on 3306/6379/5672 and every other private process alone. Subclasses say
how it is started (:meth:`~PrivateProcess.argv`, :meth:`~PrivateProcess.environ`), prepared the first time
(:meth:`~PrivateProcess.prepare`) and asked whether it answers (:meth:`~PrivateProcess.ping`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from chat_devtools.ports import free_port


def missing_binary(binaries: tuple[str, ...], install: str) -> str | None:
    """Why this machine cannot start these server binaries (the first one missing, and ``install``: how to get
    it), or None when it can; tests skip with the reason."""
    for binary in binaries:
        if not os.access(binary, os.X_OK):
            return f"{binary} is not installed ({install})"
    return None


class PrivateProcess:
    """A server process of ours: start, SIGKILL (a crash), SIGTERM (a clean stop), wait until it answers."""

    name = "service"
    boot_timeout = 60.0
    poll_interval = 0.2  # seconds between pings while it boots

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.log_path = self.dir / "server.log"
        self.popen: subprocess.Popen | None = None

    # -- to override -------------------------------------------------------------------------------------------
    def argv(self) -> list[str]:
        """The command line that starts it (called at every start)."""
        raise NotImplementedError

    def environ(self) -> dict[str, str]:
        """Its environment."""
        return dict(os.environ)

    def prepare(self) -> None:
        """One-time setup before the first start (data directory, config files)."""

    def ping(self) -> bool:
        """True when it answers (may raise instead of returning False)."""
        raise NotImplementedError

    def after_first_start(self) -> None:
        """One-time setup once the server answers (users, grants)."""

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self, wait: bool = True) -> PrivateProcess:
        """Start it (preparing its directory the first time); with ``wait``, until it answers."""
        if not (self.dir / ".prepared").exists():
            self.prepare()
            (self.dir / ".prepared").touch()
        with self.log_path.open("ab") as log:
            # A process group of its own: a kill reaches the wrapper scripts' children, and nothing else.
            self.popen = subprocess.Popen(
                self.argv(), env=self.environ(), cwd=self.dir, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
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
        """Seconds until it answered; raises when it died or took longer than its boot timeout."""
        started = time.monotonic()
        deadline = started + (timeout or self.boot_timeout)
        while time.monotonic() < deadline:
            if self.popen is not None and self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}; see {self.log_path}")
            with contextlib.suppress(Exception):
                if self.ping():
                    return time.monotonic() - started
            time.sleep(self.poll_interval)
        raise TimeoutError(f"{self.name} did not answer in time; see {self.log_path}")

    def signal(self, sig: int, timeout: float = 60) -> None:
        """Signal its process group and wait for it to exit (SIGKILL after ``timeout``)."""
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
        """Whether its process is running."""
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
