"""The processes under test, and what the benchmark watches while they run: CPU per component, peak memory.

Processes are started with the test harness (chat_devtools: an isolated namespace, gunicorn and the writers
as real processes), so the benchmark measures exactly what `make run` and the tests start.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from chat_devtools.namespace import Namespace
from chat_devtools.processes import Process, System

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SERVERS = {"rabbitmq": ("beam.smp",), "redis": ("redis-server",), "mysql": ("mariadbd", "mysqld")}


def children(pid: int) -> list[int]:
    """Direct children of a process (gunicorn's workers)."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size of a live process (VmHWM), MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def _busy_seconds() -> float:
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / CLOCK_TICKS


def server_pids() -> dict[str, list[int]]:
    """PIDs of the shared servers (RabbitMQ, Redis, MariaDB/MySQL) running on this machine."""
    found: dict[str, list[int]] = {role: [] for role in SERVERS}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        for role, names in SERVERS.items():
            if comm in names:
                found[role].append(int(entry.name))
    return found


class CpuMeter:
    """Cores used per component between ``start`` and ``stop``; ``other`` is everything this run did not start.

    On a shared 2-core machine this says where the CPU went (and how much other work was running meanwhile).
    """

    def __init__(self, roles: dict[str, list[int]], split: list[int] | None = None) -> None:
        self.roles = {**server_pids(), **roles}
        self.split_pids = list(split or [])  # processes also reported one by one (the API's workers)
        self.split: list[float] = []  # cores per process of ``split_pids``, after ``stop``
        self._start: dict[str, float] = {}
        self._split_start: list[float] = []
        self._busy = 0.0
        self._at = 0.0

    def _sample(self) -> dict[str, float]:
        return {role: sum(_cpu_seconds(p) for p in pids) for role, pids in self.roles.items()}

    def start(self) -> CpuMeter:
        self._split_start = [_cpu_seconds(p) for p in self.split_pids]
        self._start, self._busy, self._at = self._sample(), _busy_seconds(), time.monotonic()
        return self

    def stop(self, client_cpu_seconds: float = 0.0) -> dict[str, float]:
        """Average cores per role; ``client`` is passed in (wrk's own CPU, measured from its exit)."""
        elapsed = time.monotonic() - self._at
        end = self._sample()
        self.split = [
            round(max(_cpu_seconds(p) - before, 0.0) / elapsed, 3)
            for p, before in zip(self.split_pids, self._split_start, strict=True)
        ]
        used = {role: max(end[role] - self._start.get(role, 0.0), 0.0) for role in end}
        used["client"] = client_cpu_seconds
        busy = _busy_seconds() - self._busy
        used["other"] = max(busy - sum(used.values()), 0.0)
        cores = {role: round(seconds / elapsed, 3) for role, seconds in used.items()}
        cores["total"] = round(busy / elapsed, 3)
        return cores


@dataclass
class PeakMemory:
    """Highest peak RSS seen per role across every process of the run."""

    mb: dict[str, float] = field(default_factory=dict)

    def record(self, role: str, pids: list[int]) -> None:
        for pid in pids:
            self.mb[role] = round(max(self.mb.get(role, 0.0), peak_rss_mb(pid)), 1)


class Stack:
    """API (gunicorn) and writers of one namespace, with the knobs the scenarios turn."""

    def __init__(
        self,
        namespace: Namespace,
        log_dir: Path,
        memory: PeakMemory,
        *,
        workers: int = 2,
        app: str | None = None,
        message_writers: int = 1,
        env: dict[str, str] | None = None,
    ) -> None:
        self.system = System(namespace, log_dir, api_workers=workers, extra_env=env)
        self.app = app
        if app:
            self.system.api.argv.append(app)
        self.memory = memory
        self.writers: list[Process] = [self.system.message_writer]
        self.message_writers = message_writers

    @property
    def base_url(self) -> str:
        return self.system.base_url

    def start_api(self) -> Stack:
        """Start gunicorn and wait until it answers (the real API: until ready and numbering is open)."""
        self.system.api.start()
        if self.app is None or "naive" in self.app:
            self.system.wait_ready()
        else:
            self._wait_answering()
        return self

    def restart_api(self, **env: str) -> Stack:
        """Stop gunicorn and start it again with these environment changes (e.g. ``GUNICORN_WORKERS="4"``)."""
        self.record_memory()
        self.system.api.stop()
        self.system.env.update(env)  # the Process shares this dict
        return self.start_api()

    def start_writers(self) -> Stack:
        """Start the chat-writer and the message-writers."""
        self.system.chat_writer.start()
        self.set_message_writers(self.message_writers)
        return self

    def start(self) -> Stack:
        self.start_writers()
        return self.start_api()

    def _wait_answering(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                requests.get(f"{self.base_url}/", timeout=1)
                return
            except requests.RequestException:
                time.sleep(0.1)
        raise TimeoutError(f"gunicorn did not answer; see {self.system.log_dir}")

    def api_pids(self) -> list[int]:
        """The gunicorn master and its workers."""
        master = self.system.api.popen.pid if self.system.api.popen else 0
        return [master, *children(master)] if master else []

    def writer_pids(self) -> list[int]:
        """Running writer processes (chat and message)."""
        return [
            p.pid for p in (self.system.chat_writer, *self.writers) if p.popen is not None and p.popen.poll() is None
        ]

    def worker_pids(self) -> list[int]:
        """The gunicorn workers (children of the master): each runs one event loop."""
        master = self.system.api.popen.pid if self.system.api.popen else 0
        return children(master) if master else []

    def cpu_meter(self) -> CpuMeter:
        """A meter over this stack's processes and the shared servers; each API worker is also split out."""
        return CpuMeter({"api": self.api_pids(), "writers": self.writer_pids()}, split=self.worker_pids())

    def record_memory(self) -> None:
        """Remember the peak RSS of every API worker and writer (call before stopping)."""
        master = self.system.api.popen.pid if self.system.api.popen else 0
        role = "api_worker" if self.app is None else f"api_worker[{self.app}]"
        self.memory.record(role, children(master))
        self.memory.record("message_writer", [w.pid for w in self.writers if w.popen and w.popen.poll() is None])
        if self.system.chat_writer.popen is not None and self.system.chat_writer.popen.poll() is None:
            self.memory.record("chat_writer", [self.system.chat_writer.pid])

    def set_message_writers(self, count: int) -> list[int]:
        """Run exactly ``count`` message-writers (stopping the others); returns their PIDs."""
        while len(self.writers) < count:
            writer = self.system.message_writer
            self.writers.append(
                Process(f"message-writer-{len(self.writers) + 1}", writer.argv, writer.env, self.system.log_dir)
            )
        self.record_memory()
        for i, writer in enumerate(self.writers):
            running = writer.popen is not None and writer.popen.poll() is None
            if i < count and not running:
                writer.start()
            elif i >= count and running:
                writer.stop()
        return [w.pid for w in self.writers[:count]]

    def stop_writers(self) -> None:
        """SIGTERM the writers (they finish the batch in hand)."""
        self.record_memory()
        for process in (self.system.chat_writer, *self.writers):
            process.stop()

    def stop(self) -> None:
        """Record peak memory, then stop everything."""
        self.record_memory()
        self.system.api.stop()
        self.stop_writers()
