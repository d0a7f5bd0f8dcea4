"""Start the real processes (gunicorn API, writers, count sync) of a namespace, and stop or kill them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from chat_devtools.namespace import Namespace
from chat_devtools.ports import free_port

# Children run from the repository root (this file is devtools/chat_devtools/processes.py) with this interpreter,
# whose virtualenv has every package installed.
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


class Process:
    """One child process with its log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.popen: subprocess.Popen | None = None

    def start(self) -> Process:
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        """Signal the process and wait for it; SIGKILL when it does not stop in time."""
        self.send(sig)
        return self.wait_stopped(timeout)

    def send(self, sig: int = signal.SIGTERM) -> None:
        """Signal the process if it is running; returns at once."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(sig)

    def wait_stopped(self, timeout: float = 30) -> int | None:
        """Wait for the process to end; SIGKILL when it does not in time."""
        if self.popen is None or self.popen.poll() is not None:
            return self.popen.returncode if self.popen else None
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(10)

    def kill(self) -> None:
        """SIGKILL: the crash no code can react to."""
        self.stop(signal.SIGKILL)

    def restart(self) -> Process:
        self.stop()
        return self.start()

    @property
    def pid(self) -> int:
        return self.popen.pid


class System:
    """The whole chat system of one namespace, as separate real processes."""

    def __init__(self, namespace: Namespace, log_dir: Path, *, api_workers: int = 2, extra_env: dict | None = None):
        self.namespace = namespace
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, **namespace.environ(), "PORT": str(self.port)}
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        env["GUNICORN_WORKERS"] = str(api_workers)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env.update(extra_env or {})
        self.env = env
        log_dir.mkdir(parents=True, exist_ok=True)
        python = sys.executable
        self.api = Process("api", [python, "-m", "gunicorn", "--config", "services/api/gunicorn.conf.py"], env, log_dir)
        self.chat_writer = Process("chat-writer", [python, "-m", "chat_writer"], env, log_dir)
        self.message_writer = Process("message-writer", [python, "-m", "message_writer"], env, log_dir)
        self.log_dir = log_dir

    def start(self, wait_ready: bool = True) -> System:
        """Start API and writers; wait until the API is ready and numbering is open. A system that never gets ready is
        stopped before the error propagates (a fixture whose setup failed has no teardown to stop it)."""
        self.api.start()
        self.chat_writer.start()
        self.message_writer.start()
        if wait_ready:
            try:
                self.wait_ready()
            except BaseException:
                self.stop()
                raise
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        """Until /readyz answers 200 and numbering is open (the first create of a namespace waits for it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.base_url}/readyz", timeout=2).status_code == 200 and self.numbering_open():
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"system not ready; see logs in {self.log_dir}")

    def numbering_open(self) -> bool:
        """True when the API says numbering is open: every slot that ever opened has its epoch (a fresh system
        opens each slot on its first create; see chat_api.numbering.opening)."""
        try:
            checks = requests.get(f"{self.base_url}/status", timeout=5).json()["checks"]
        except (requests.RequestException, ValueError, KeyError):
            return False
        return checks.get("numbering") == "open"

    def sync_counts(self) -> subprocess.CompletedProcess:
        """Run one count sync (`make sync-counts`) in this namespace."""
        return subprocess.run(
            [sys.executable, "-m", "counter_cron"], env=self.env, cwd=ROOT, capture_output=True, timeout=120, check=True
        )

    def stop(self) -> None:
        """Stop everything gracefully, all at once: one process's graceful shutdown overlaps the others'."""
        processes = (self.api, self.chat_writer, self.message_writer)
        for process in processes:
            process.send(signal.SIGTERM)
        for process in processes:
            process.wait_stopped()
