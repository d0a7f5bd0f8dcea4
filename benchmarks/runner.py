"""The runner of `make bench`: one namespace, the processes under test, and what every scenario measures with.

:class:`Bench` owns the run: a fresh namespace (database, Redis prefix, queue names; chat_devtools.namespace) with
the production defaults of the writers, the API and writers started as real processes, the results. Scenarios
(:mod:`benchmarks.scenarios`, one module each) take it and return their figures; it gives them a wrk point with
the CPU of every component (:meth:`Bench.measure`), a bare-Falcon ceiling, applications with chats, and the
table filled for the growth, read and count-sync scenarios (:meth:`Bench.fill`, made once).
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import time
from pathlib import Path

import redis
from sqlalchemy import text

from benchmarks import data
from benchmarks.knobs import (
    CONCURRENCY,
    COUNT_SYNC_CHATS,
    DRAIN_MESSAGES,
    E2E_SECONDS,
    GROWTH_ROWS,
    HEADLINE_CONCURRENCY,
    LOG_DIR,
    MESSAGE_BODY,
    METRICS_ITERATIONS,
    PRODUCTION,
    REPEATS,
    SECONDS,
    WORKERS,
)
from benchmarks.scenarios import SCENARIOS
from benchmarks.system import PeakMemory, Stack
from chat_common.clients.broker import BrokerNodes
from chat_common.clients.db import make_engine
from chat_common.wire.keys import RedisKeys
from chat_common.wire.topology import Topology
from chat_devtools.http import Api
from chat_devtools.load.wrk import HttpResult, require_wrk, wrk
from chat_devtools.namespace import Namespace
from chat_devtools.processes import ROOT


class Bench:
    """One benchmark run: the namespace, the processes, the results."""

    def __init__(self, only: set[str]) -> None:
        self.only = only
        self.started = time.monotonic()
        self.namespace = Namespace.create(
            "bench",
            publish_timeout_seconds=PRODUCTION.publish_timeout_seconds,
            writer_max_wait_seconds=PRODUCTION.writer_max_wait_seconds,
            writer_retry_delays_seconds=PRODUCTION.writer_retry_delays_seconds,
        )
        self.settings = self.namespace.settings
        self.engine = make_engine(self.settings.database_url)
        self.keys = RedisKeys(self.settings.redis_key_prefix)
        self.topology = Topology(self.settings.queue_prefix, self.settings.writer_retry_delays_seconds)
        self.log_dir = LOG_DIR / self.namespace.name
        self.memory = PeakMemory()
        self.results: dict = {"meta": {}, "scenarios": {}}
        self.api: Stack | None = None
        self.client: Api | None = None
        self.filled: dict | None = None

    # -- plumbing --------------------------------------------------------------------------------------------------

    def log(self, message: str) -> None:
        """Progress on stdout."""
        print(f"[{time.monotonic() - self.started:6.1f}s] {message}", flush=True)

    def stack(self, name: str, **kwargs) -> Stack:
        """A stack in this namespace, logging under the run's log directory."""
        kwargs.setdefault("workers", WORKERS)
        return Stack(self.namespace, self.log_dir / name, self.memory, **kwargs)

    def measure(self, stack: Stack, label: str, paths: list[str], connections: int, repeats: int = 1, **kwargs) -> dict:
        """One wrk point with the CPU each component used meanwhile; with ``repeats``, the median run of several.

        Repeats tame the noise of a shared machine. Every point also records the CPU of each API worker
        process (``api_worker_cores``, and its share of the workers' total in ``api_worker_cpu_split``), which
        shows whether the connections were spread evenly over the workers.
        """
        runs = []
        for _ in range(repeats):
            meter = stack.cpu_meter().start()
            result: HttpResult = wrk(stack.base_url, paths, connections=connections, seconds=SECONDS, **kwargs)
            runs.append((result, meter.stop(result.client_cpu * result.seconds), meter.split))
        runs.sort(key=lambda run: run[0].rps)
        result, cores, split = runs[len(runs) // 2]
        point = result.as_dict()
        point["cpu_cores"] = cores
        point["api_worker_cores"] = split
        point["api_worker_cpu_split"] = [round(c / sum(split), 3) for c in split] if sum(split) else []
        if repeats > 1:
            point["rps_runs"] = [round(r.rps, 1) for r, _, _ in runs]
        if result.rps:
            point["cpu_us_per_request"] = {role: round(c / result.rps * 1e6, 1) for role, c in cores.items()}
        self.log(
            f"  {label:<28} c={connections:<4} {result.rps:8.0f} req/s  p50 {result.p50_ms:7.1f} ms"
            f"  p99 {result.p99_ms:7.1f} ms  errors {result.errors}  (client {result.client_cpu:.2f} cores,"
            f" other load {cores['other']:.2f} cores; API {cores['api'] / result.rps * 1e6 if result.rps else 0:.0f}"
            f" us/req, workers {point['api_worker_cpu_split']})"
            + (f" median of {point['rps_runs']}" if repeats > 1 else "")
        )
        return point

    def framework_ceiling(self, label: str, paths: list[str], **stack_kwargs) -> dict:
        """POST the headline load to a bare Falcon app under the same gunicorn settings; the ceiling of a create."""
        bare = self.stack(f"bare-{label}", app="benchmarks.apps:bare_app()", **stack_kwargs).start_api()
        try:
            return self.measure(
                bare,
                f"framework ceiling, {label}",
                paths,
                HEADLINE_CONCURRENCY,
                method="POST",
                body=MESSAGE_BODY,
                repeats=REPEATS,
            )
        finally:
            bare.stop()
            self.client.session.close()  # an idle keep-alive connection would delay a worker's graceful shutdown

    def wait_queues_empty(self, timeout: float = 600) -> None:
        """Until the writers have caught up with everything queued so far."""
        names = (self.topology.messages.name, self.topology.chats.name)
        data.wait_for(
            lambda: all(data.queue_depth(self.settings.rabbitmq_url, q) == 0 for q in names), timeout, 0.5, "queues"
        )
        time.sleep(self.settings.writer_max_wait_seconds * 2)

    def new_app(self, name: str, chats: int) -> tuple[str, int, list[int]]:
        """An application with ``chats`` chats created through the API (rows written); (token, id, numbers)."""
        token = self.client.new_application(name)
        numbers = [self.client.new_chat(token, f"{name} {i}") for i in range(chats)]
        self.client.wait_chat(token, numbers[-1], timeout=30)
        return token, data.application_id(self.engine, token), numbers

    def message_paths(self, token: str, chats: list[int]) -> list[str]:
        """The create-message path of each chat."""
        return [f"/applications/{token}/chats/{n}/messages" for n in chats]

    def peak_create_rps(self, probe_name: str) -> float:
        """The highest create-message rate measured so far in this run; when the create scenario did not run, a
        probe at c=64 on an application of its own (``probe_name``)."""
        points = self.results["scenarios"].get("create_message")
        if points:
            return max(p["rps"] for p in points)
        token, _, chats = self.new_app(probe_name, 16)
        paths = self.message_paths(token, chats)
        probe = self.measure(
            self.api, "create message (probe)", paths, HEADLINE_CONCURRENCY, method="POST", body=MESSAGE_BODY
        )
        self.wait_queues_empty()
        return probe["rps"]

    def wanted(self, name: str) -> bool:
        return not self.only or name in self.only

    def fill(self) -> dict:
        """Fill the messages table to ``BENCH_GROWTH_ROWS`` rows, shaped for the read and count-sync scenarios."""
        if self.filled is not None:
            return self.filled
        present = data.total_messages(self.engine)
        wanted = max(GROWTH_ROWS - present, 0)
        big = max(min(100_000, GROWTH_ROWS // 10), 100)
        small = max(big // 10, 10)
        per_chat = max((wanted - big - small) // COUNT_SYNC_CHATS, 1)
        token = self.client.new_application("growth")
        app_id = data.application_id(self.engine, token)
        chat_ids = data.insert_chats(self.engine, app_id, range(1, COUNT_SYNC_CHATS + 3))
        self.log(f"filling the table: {present} rows present, adding {big + small + per_chat * COUNT_SYNC_CHATS}")
        started = time.monotonic()
        rows = [(chat_ids[1], n) for n in range(1, big + 1)] + [(chat_ids[2], n) for n in range(1, small + 1)]
        rows += ((chat_ids[c], n) for c in range(3, COUNT_SYNC_CHATS + 3) for n in range(1, per_chat + 1))
        written = data.bulk_messages(self.settings.database_url, app_id, rows)
        with self.engine.connect() as conn:
            conn.execute(text("ANALYZE TABLE messages, chats"))
        elapsed = time.monotonic() - started
        self.log(f"  {written} rows in {elapsed:.0f}s; table now {data.total_messages(self.engine)} rows")
        self.filled = {
            "token": token,
            "app_id": app_id,
            "chat_ids": chat_ids,
            "read_chats": {big: 1, small: 2},
            "sync_chats": [chat_ids[c] for c in range(3, COUNT_SYNC_CHATS + 3)],
        }
        return self.filled

    # -- the run ---------------------------------------------------------------------------------------------------

    def run(self) -> dict:
        """Every scenario (or those asked for) in the order of :data:`benchmarks.scenarios.SCENARIOS`, then the
        results."""
        require_wrk()
        self.results["meta"] = self.conditions()
        self.log(f"namespace {self.namespace.name}; logs in {self.log_dir}")
        self.api = self.stack("api").start()
        self.client = Api(self.api.base_url)
        try:
            for name, scenario in SCENARIOS.items():
                if self.wanted(name):
                    self.results["scenarios"].update(scenario(self))
        finally:
            self.client.session.close()
            self.api.stop()
            self.results["meta"]["gunicorn"]["worker_class"] = self.worker_class()
            self.results["scenarios"]["memory_peak_rss_mb"] = self.memory.mb
            self.results["meta"]["loadavg_end"] = os.getloadavg()
            self.results["meta"]["seconds"] = round(time.monotonic() - self.started, 1)
            self.engine.dispose()
            self.namespace.destroy()
        return self.results

    def worker_class(self) -> str:
        """The worker class gunicorn reported using (``chat_api.worker.ApiWorker``, set in gunicorn.conf.py)."""
        log = self.log_dir / "api" / "api.log"
        found = re.findall(r"Using worker: (\S+)", log.read_text()) if log.exists() else []
        return found[-1] if found else "unknown"

    # -- conditions ------------------------------------------------------------------------------------------------

    def conditions(self) -> dict:
        """What the figures were measured on."""
        s = self.settings
        connection = BrokerNodes(s.rabbitmq_url).connect_blocking()
        rabbit = connection._impl.server_properties.get("version", b"?")
        connection.close()
        with self.engine.connect() as conn:
            mysql_version = conn.execute(text("SELECT VERSION()")).scalar_one()
            flush = conn.execute(text("SELECT @@innodb_flush_log_at_trx_commit")).scalar_one()
        client = redis.Redis.from_url(s.redis_url)
        redis_version = client.info("server")["redis_version"]
        client.close()
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
        model = next((x.split(":", 1)[1].strip() for x in cpuinfo if x.startswith("model name")), platform.processor())
        commit = _output(["git", "rev-parse", "--short", "HEAD"])
        dirty = bool(_output(["git", "status", "--porcelain"]))
        wrk_version = _output(["wrk", "--version"]).split("\n")[0].split(" Copyright")[0]
        return {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "commit": commit + ("+dirty" if dirty else ""),
            "cpus": os.cpu_count(),
            "cpu_model": model,
            "loadavg_start": os.getloadavg(),
            "python": platform.python_version(),
            "mysql": mysql_version,
            "innodb_flush_log_at_trx_commit": flush,
            "rabbitmq": rabbit.decode() if isinstance(rabbit, bytes) else str(rabbit),
            "redis": redis_version,
            "wrk": wrk_version,
            "gunicorn": {
                "workers": WORKERS,
                "worker_class": "see the API log",
            },
            "writer_batch_size": s.writer_batch_size,
            "writer_max_wait_seconds": s.writer_max_wait_seconds,
            "knobs": {
                "BENCH_SECONDS": SECONDS,
                "BENCH_REPEATS": REPEATS,
                "BENCH_CONCURRENCY": CONCURRENCY,
                "BENCH_DRAIN_MESSAGES": DRAIN_MESSAGES,
                "BENCH_GROWTH_ROWS": GROWTH_ROWS,
                "BENCH_E2E_SECONDS": E2E_SECONDS,
                "BENCH_METRICS_ITERATIONS": METRICS_ITERATIONS,
            },
            "only": sorted(self.only) or "all",
        }


def _output(argv: list[str]) -> str:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True).stdout.strip()
