"""The benchmark run: every scenario of issue 7 and the ceilings they are compared with, in one process.

Everything runs in a fresh namespace (database, Redis prefix, queue names; chat_devtools.namespace) with
the production defaults of the writers, against gunicorn and the writers started as real processes. The
order reuses data: write scenarios on an empty table first, then the table is filled to ``BENCH_GROWTH_ROWS``
for the growth, read and count-sync scenarios. Knobs (environment):

- ``BENCH_SECONDS`` (5): length of each wrk run; ``BENCH_CONCURRENCY`` ("1,16,64,256").
- ``BENCH_REPEATS`` (3): runs per point of scenario 1, its ceiling and the naive baseline (the median is kept).
- ``BENCH_DRAIN_MESSAGES`` (100000): messages pre-filled for each writer drain.
- ``BENCH_GROWTH_ROWS`` (1000000): message rows in the table before the growth scenarios.
- ``BENCH_E2E_SECONDS`` (15): length of each paced end-to-end run.
- ``BENCH_METRICS_ITERATIONS`` (200000): creates' metric calls timed by the ``metrics_cost`` scenario.
- ``GUNICORN_WORKERS`` / ``WRITER_BATCH_SIZE``: as in production. The worker class is fixed by
  services/api/gunicorn.conf.py (``chat_api.worker.ApiWorker``: uvicorn, one event loop per process).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from sqlalchemy import text

from benchmarks import ceilings, cluster, data, report, streams
from benchmarks.loadgen import HttpResult, paced_posts, quantile, require_wrk, wrk
from benchmarks.system import PeakMemory, Stack, peak_rss_mb
from chat_common.broker import BrokerNodes
from chat_common.config import Settings
from chat_common.db import make_engine
from chat_common.keys import RedisKeys, dirty_chat_mark
from chat_common.topology import Topology
from chat_devtools.http import Api
from chat_devtools.namespace import Namespace
from chat_devtools.processes import ROOT, free_port
from counter_cron.sync import CountSync

SECONDS = float(os.environ.get("BENCH_SECONDS", "5"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
CONCURRENCY = [int(c) for c in os.environ.get("BENCH_CONCURRENCY", "1,16,64,256").split(",")]
HEADLINE_CONCURRENCY = 64
DRAIN_MESSAGES = int(os.environ.get("BENCH_DRAIN_MESSAGES", "100000"))
GROWTH_ROWS = int(os.environ.get("BENCH_GROWTH_ROWS", "1000000"))
E2E_SECONDS = float(os.environ.get("BENCH_E2E_SECONDS", "15"))
METRICS_ITERATIONS = int(os.environ.get("BENCH_METRICS_ITERATIONS", "200000"))
WORKERS = int(os.environ.get("GUNICORN_WORKERS", "2"))
WORKER_COUNTS = (1, 2, 4)
READ_CONCURRENCY = (1, 16, 64)
COUNT_SYNC_CHATS = 10_000
LOG_DIR = Path(os.environ.get("BENCH_LOG_DIR", "/tmp/chat-system-bench-logs"))
RESULTS = ROOT / "benchmarks" / "results" / "latest.json"
MESSAGE_BODY = '{"body": "hello everyone, the benchmark says hi and asks how you are"}'
CHAT_BODY = '{"name": "benchmark chat"}'
SEARCH_FRAGMENTS = ("ello", "queue", "deploy", "coff", "dashb", "tomorrow")
SCENARIOS = (
    "loadgen",
    "create",
    "naive",
    "ceilings",
    "metrics_cost",
    "e2e",
    "drain",
    "growth",
    "reads",
    "count_sync",
    "streams",
    "rabbit_cluster",
)

# The namespace uses the production defaults (tests shorten some of them).
PRODUCTION = Settings()


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

    # -- plumbing --------------------------------------------------------------------------------------------
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

    def wanted(self, name: str) -> bool:
        return not self.only or name in self.only

    # -- the run ---------------------------------------------------------------------------------------------
    def run(self) -> dict:
        """Every scenario (or those asked for), then the results."""
        require_wrk()
        self.results["meta"] = self.conditions()
        self.log(f"namespace {self.namespace.name}; logs in {self.log_dir}")
        self.api = self.stack("api").start()
        self.client = Api(self.api.base_url)
        scenarios = self.results["scenarios"]
        try:
            if self.wanted("loadgen"):
                scenarios["loadgen"] = self.loadgen_ceiling()
            if self.wanted("create"):
                scenarios.update(self.create())
            if self.wanted("naive"):
                scenarios["naive_sync_insert"] = self.naive()
            if self.wanted("ceilings"):
                scenarios["ceilings"] = self.part_ceilings()
            if self.wanted("metrics_cost"):
                scenarios["metrics_cost"] = self.metrics_cost()
            if self.wanted("e2e"):
                scenarios["e2e"] = self.e2e()
            if self.wanted("drain"):
                scenarios["drain"] = self.drains("before the fill")
            if self.wanted("growth"):
                scenarios["growth"] = self.growth()
            if self.wanted("reads"):
                scenarios["reads"] = self.reads()
            if self.wanted("count_sync"):
                scenarios["count_sync"] = self.count_sync()
            if self.wanted("streams"):
                scenarios["streams"] = self.streams()
            if self.wanted("rabbit_cluster"):
                self.log("RabbitMQ: one private node (classic, quorum) against a 3-node cluster (quorum), c=64")
                scenarios["rabbit_cluster"] = cluster.run(
                    log_dir=self.log_dir,
                    memory=self.memory,
                    workers=WORKERS,
                    connections=HEADLINE_CONCURRENCY,
                    seconds=SECONDS,
                    repeats=REPEATS,
                    log=self.log,
                )
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

    # -- scenarios -------------------------------------------------------------------------------------------
    def loadgen_ceiling(self) -> dict:
        """wrk against a server that does nothing: what the load generator itself can drive here."""
        self.log("load generator ceiling (wrk against a canned-response server)")
        port = free_port()
        servers = [subprocess.Popen([sys.executable, "-m", "benchmarks.canned", str(port)], cwd=ROOT) for _ in range(2)]
        try:
            url = f"http://127.0.0.1:{port}"
            data.wait_for(lambda: _answers(url), 15, 0.1, "canned server")
            result = wrk(url, ["/x"], connections=HEADLINE_CONCURRENCY, seconds=SECONDS, method="POST", body="{}")
        finally:
            for server in servers:
                server.terminate()
                server.wait()
        us_per_request = result.client_cpu * result.seconds / result.requests * 1e6
        self.log(
            f"  wrk drove {result.rps:.0f} req/s using {result.client_cpu:.2f} cores ({us_per_request:.1f} us/request:"
            f" one core of wrk ~ {1e6 / us_per_request:.0f} req/s)"
        )
        return {
            **result.as_dict(),
            "client_us_per_request": round(us_per_request, 2),
            "client_ceiling_rps_per_core": round(1e6 / us_per_request),
        }

    def create(self) -> dict:
        """Scenarios 1 and 2 beside the framework ceiling, and creates while the writers are stopped."""
        token, _, chats = self.new_app("create", 16)
        message_paths = [f"/applications/{token}/chats/{n}/messages" for n in chats]
        chat_paths = [f"/applications/{token}/chats"]
        bare = self.stack("bare", app="benchmarks.apps:bare_app()").start_api()
        out: dict = {"create_message": [], "framework_ceiling": [], "create_chat": []}
        try:
            self.log("warm-up (not recorded)")
            for stack in (bare, self.api):
                wrk(stack.base_url, message_paths, connections=16, seconds=3, method="POST", body=MESSAGE_BODY)
            self.log("scenario 1: POST …/messages, each point beside the bare-Falcon ceiling")
            for c in CONCURRENCY:
                post = {"method": "POST", "body": MESSAGE_BODY, "repeats": REPEATS}
                out["framework_ceiling"].append(self.measure(bare, "framework ceiling", message_paths, c, **post))
                out["create_message"].append(self.measure(self.api, "create message", message_paths, c, **post))
        finally:
            bare.stop()
        self.wait_queues_empty()
        self.log("scenario 2: POST …/chats")
        for c in CONCURRENCY:
            point = self.measure(self.api, "create chat", chat_paths, c, method="POST", body=CHAT_BODY)
            out["create_chat"].append(point)
        self.wait_queues_empty()
        self.log("scenario 1 with the writers stopped (the queue absorbs the burst)")
        self.api.stop_writers()
        out["create_message_writers_stopped"] = self.measure(
            self.api,
            "create message, no writers",
            message_paths,
            HEADLINE_CONCURRENCY,
            method="POST",
            body=MESSAGE_BODY,
        )
        self.api.start_writers()
        self.wait_queues_empty()
        return out

    def naive(self) -> list[dict]:
        """The design the queue replaces: the same POST inserting its row inside the request."""
        token, _, chats = self.new_app("naive", 16)
        paths = [f"/applications/{token}/chats/{n}/messages" for n in chats]
        naive = self.stack("naive", app="benchmarks.apps:naive_app()").start_api()
        self.log("naive baseline: POST …/messages answered after an INSERT in the request")
        try:
            wrk(naive.base_url, paths, connections=16, seconds=2, method="POST", body=MESSAGE_BODY)
            post = {"method": "POST", "body": MESSAGE_BODY, "repeats": REPEATS}
            return [self.measure(naive, "naive sync insert", paths, c, **post) for c in CONCURRENCY]
        finally:
            naive.stop()

    def part_ceilings(self) -> dict:
        """Redis script, RabbitMQ publish with confirms, raw batched insert: each alone."""
        s = self.settings
        out: dict = {}
        self.log("ceilings of the parts")
        client = redis.Redis.from_url(s.redis_url)
        token = 1 << 40  # an application id no row has: the ceiling's own counters, in a slot of its own
        client.hset(self.keys.numbers(token), mapping={"id": 1, "chats": 1, "m:1": 0})
        opened = client.set(self.keys.epoch_of(token), "bench", nx=True)
        out["redis_script_per_call"] = ceilings.redis_numbering(s.redis_url, self.keys, token, 1, 20_000, 1).as_dict()
        out["redis_script_pipelined_100"] = ceilings.redis_numbering(
            s.redis_url, self.keys, token, 1, 100_000, 100
        ).as_dict()
        client.delete(self.keys.numbers(token))
        if opened:
            client.delete(self.keys.epoch_of(token))
        client.close()
        self.log(
            f"  redis numbering script: {out['redis_script_per_call']['per_second']:.0f}/s one per round trip,"
            f" {out['redis_script_pipelined_100']['per_second']:.0f}/s pipelined by 100"
        )
        queue = f"{s.queue_prefix}.ceiling"
        connection = BrokerNodes(s.rabbitmq_url).connect_blocking()
        channel = connection.channel()
        channel.queue_declare(queue, durable=True)
        body = (
            b'{"v":1,"application_id":1,"chat_number":1,"message_number":1,"body":"%s","version":0}'
            % (MESSAGE_BODY.encode()[10:-2])
        )
        try:
            out["rabbitmq_publish_confirm_each"] = ceilings.publish_confirmed(
                s.rabbitmq_url, queue, body, 3000, 1
            ).as_dict()
            for window in (16, 64, 256):
                out[f"rabbitmq_publish_confirm_window_{window}"] = ceilings.publish_confirmed(
                    s.rabbitmq_url, queue, body, 20_000, window
                ).as_dict()
            unconfirmed = ceilings.publish_unconfirmed(s.rabbitmq_url, queue, body, 30_000)
            out["rabbitmq_publish_unconfirmed"] = unconfirmed.as_dict()
        finally:
            channel.queue_delete(queue)
            connection.close()
        rates = (
            f"{k.removeprefix('rabbitmq_publish_')} {v['per_second']:.0f}/s" for k, v in out.items() if "rabbit" in k
        )
        self.log("  rabbitmq persistent publish: " + ", ".join(rates))
        return out

    def e2e(self) -> list[dict]:
        """Scenario 3: from the 201 to the row in MySQL, at 50% and 90% of the maximum create throughput."""
        points = self.results["scenarios"].get("create_message")
        if not points:
            token, _, chats = self.new_app("e2e-probe", 16)
            paths = [f"/applications/{token}/chats/{n}/messages" for n in chats]
            probe = self.measure(
                self.api, "create message (probe)", paths, HEADLINE_CONCURRENCY, method="POST", body=MESSAGE_BODY
            )
            points = [probe]
            self.wait_queues_empty()
        peak = max(p["rps"] for p in points)
        out = []
        for share in (0.5, 0.9):
            token, app_id, chats = self.new_app(f"e2e-{share}", 16)
            paths = [f"/applications/{token}/chats/{n}/messages" for n in chats]
            rate = peak * share
            self.log(
                f"scenario 3: end to end at {share:.0%} of {peak:.0f} req/s = {rate:.0f} req/s, {E2E_SECONDS:.0f}s"
            )
            meter = self.api.cpu_meter().start()
            run = paced_posts(self.api.base_url, paths, MESSAGE_BODY, rate=rate, seconds=E2E_SECONDS)
            cores = meter.stop()
            accepted = [a for a in run.answers if a.status == 201]
            expected = len(accepted)
            data.wait_for(
                lambda a=app_id, n=expected: data.count_messages(self.engine, a) >= n, 120, 0.5, "end-to-end rows"
            )
            written = data.write_times(self.engine, app_id)
            delays = sorted(written[(chats[a.path_index % len(chats)], a.number)] - a.answered_at for a in accepted)
            point = {
                "share_of_max": share,
                "target_rps": round(rate, 1),
                "achieved_rps": round(run.achieved_rps, 1),
                "requests": len(run.answers),
                "errors": len(run.answers) - len(accepted),
                "late_sends": run.late,
                "client_cpu": round(run.client_cpu, 3),
                "cpu_cores": cores,
                "request_p50_ms": round(run.latency_ms(0.5), 2),
                "request_p99_ms": round(run.latency_ms(0.99), 2),
                "persist_p50_ms": round(1000 * quantile(delays, 0.5), 1),
                "persist_p99_ms": round(1000 * quantile(delays, 0.99), 1),
                "persist_max_ms": round(1000 * delays[-1], 1) if delays else 0.0,
                "persist_cdf_ms": [round(1000 * quantile(delays, q / 100), 1) for q in range(0, 101)],
            }
            self.log(
                f"  achieved {run.achieved_rps:.0f} req/s, request p99 {point['request_p99_ms']} ms;"
                f" 201 -> row in MySQL p50 {point['persist_p50_ms']} ms, p99 {point['persist_p99_ms']} ms"
            )
            out.append(point)
        return out

    def drains(self, label: str) -> dict:
        """Scenario 4 with its ceiling: the writer's own upsert run raw on the same rows, then 1 and 2 writers."""
        per_chat = max(DRAIN_MESSAGES // 100, 1)
        total = per_chat * 100
        out: dict = {
            "messages": total,
            "batch_size": self.settings.writer_batch_size,
            "table_rows_before": data.total_messages(self.engine),
        }
        token = self.client.new_application(f"raw {label}")
        raw_app = data.application_id(self.engine, token)
        raw_chats = data.insert_chats(self.engine, raw_app, range(1, 101))
        rows = data.message_rows(raw_app, raw_chats, per_chat)
        self.log(f"scenario 4 ({label}, {out['table_rows_before']} rows in the table): raw upsert of {total} rows")
        raw = ceilings.raw_insert(self.settings.database_url, rows, self.settings.writer_batch_size)
        out["raw_insert"] = raw.as_dict()
        self.log(f"  raw batched upsert (batch {self.settings.writer_batch_size}): {raw.per_second:.0f} rows/s")
        out["raw_consume"] = self.consume_ceiling(data.message_payloads(1, range(1, 101), per_chat), total).as_dict()
        self.log(f"  raw consume and ack, no database: {out['raw_consume']['per_second']:.0f} messages/s")
        for writers in (1, 2):
            token = self.client.new_application(f"drain {label} {writers}")
            app_id = data.application_id(self.engine, token)
            data.insert_chats(self.engine, app_id, range(1, 101))
            self.api.set_message_writers(0)
            payloads = data.message_payloads(app_id, range(1, 101), per_chat)
            queued = data.prefill_queue(self.settings.rabbitmq_url, self.topology.messages.name, payloads)
            self.log(f"  {queued} messages queued; starting {writers} message-writer(s)")
            pids = self.api.set_message_writers(writers)
            meter = self.api.cpu_meter().start()
            meter.roles["writers"] = pids
            data.wait_for(lambda a=app_id: data.count_messages(self.engine, a) >= total, 900, 0.5, "drain")
            cores = meter.stop()
            rate, count, span = data.drain_rate(self.engine, app_id)
            out[f"writers_{writers}"] = {
                "rows_per_s": round(rate, 1),
                "rows": count,
                "seconds": round(span, 3),
                "cpu_cores": cores,
            }
            self.log(f"  {writers} writer(s): {rate:.0f} rows/s ({count} rows in {span:.1f}s)")
        self.api.set_message_writers(1)
        writer = out["writers_1"]["rows_per_s"]
        out["ratio_writer_vs_raw"] = round(writer / raw.per_second, 3)
        # Consuming and inserting one after the other, as one writer process does: 1 / (1/consume + 1/insert).
        serial = 1 / (1 / out["raw_consume"]["per_second"] + 1 / raw.per_second)
        out["ratio_writer_vs_consume_then_insert"] = round(writer / serial, 3)
        return out

    def consume_ceiling(self, payloads, count: int) -> ceilings.Rate:
        """The writer's consumption alone: the same messages from a queue of their own, consumed and acked."""
        queue = f"{self.settings.queue_prefix}.ceiling"
        connection = BrokerNodes(self.settings.rabbitmq_url).connect_blocking()
        try:
            connection.channel().queue_declare(queue, durable=True)
            data.prefill_queue(self.settings.rabbitmq_url, queue, payloads)
            return ceilings.consume_only(self.settings.rabbitmq_url, queue, count, self.settings.writer_batch_size)
        finally:
            connection.channel().queue_delete(queue)
            connection.close()

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

    def growth(self) -> dict:
        """Scenario 7: scenario 1 and 4 again with the table filled, and scenario 1 with 1, 2, 4 gunicorn workers."""
        self.fill()
        out = {"drain": self.drains("table filled"), "workers": []}
        token, _, chats = self.new_app("growth-create", 16)
        paths = [f"/applications/{token}/chats/{n}/messages" for n in chats]
        self.log(f"scenario 7: create message at c={HEADLINE_CONCURRENCY} with 1, 2, 4 gunicorn workers (table filled)")
        for workers in WORKER_COUNTS:
            ceiling = self.framework_ceiling(f"{workers}w", paths, workers=workers)
            self.api.restart_api(GUNICORN_WORKERS=str(workers))
            wrk(self.api.base_url, paths, connections=16, seconds=2, method="POST", body=MESSAGE_BODY)
            point = self.measure(
                self.api,
                f"create message, {workers}w",
                paths,
                HEADLINE_CONCURRENCY,
                method="POST",
                body=MESSAGE_BODY,
                repeats=REPEATS,
            )
            out["workers"].append({"workers": workers, "create_message": point, "framework_ceiling": ceiling})
            self.wait_queues_empty()
        self.client.session.close()
        self.api.restart_api(GUNICORN_WORKERS=str(WORKERS))
        return out

    def reads(self) -> list[dict]:
        """Scenario 5: pages of a chat's messages, and a search in it, for chats of 10k and 100k messages.

        Random pages 1..50 (``?page=``) and searches at c = 1, 16, 64 (the requests of earlier runs), then on the
        big chat at c=64: page 1 (``?per_page=20``, the default size) and a deep page by keyset
        (``?after=<N-40>``, two pages from the end), whose cost should not depend on the depth.
        """
        filled = self.fill()
        token = filled["token"]
        out = []
        rng = random.Random(7)
        for size, chat in sorted(filled["read_chats"].items()):
            base = f"/applications/{token}/chats/{chat}/messages"
            pages = [f"{base}?page={rng.randint(1, 50)}" for _ in range(32)]
            searches = [f"{base}/search?query={q}" for q in SEARCH_FRAGMENTS]
            self.log(f"scenario 5: reads in a chat of {size} messages")
            for kind, paths in (("page", pages), ("search", searches)):
                for c in READ_CONCURRENCY:
                    point = self.measure(self.api, f"GET {kind} ({size // 1000}k)", paths, c)
                    out.append({"chat_messages": size, "kind": kind, **point})
        size, chat = max(filled["read_chats"].items())
        base = f"/applications/{token}/chats/{chat}/messages"
        keyset = (("page 1", f"{base}?per_page=20"), ("deep page", f"{base}?after={size - 40}"))
        self.log(f"scenario 5: page 1 and a deep page (after={size - 40}) of the {size}-message chat")
        for kind, path in keyset:
            answer = self.client.session.get(f"{self.api.base_url}{path}", timeout=10)
            if answer.status_code != 200 or len(answer.json()) != 20:
                raise RuntimeError(f"GET {path}: {answer.status_code} with {len(answer.content)} bytes")
            point = self.measure(self.api, f"GET {kind} ({size // 1000}k)", [path], HEADLINE_CONCURRENCY)
            out.append({"chat_messages": size, "kind": kind, "path": path.removeprefix(base), **point})
        return out

    def metrics_cost(self) -> dict:
        """What a create's Prometheus calls cost, timed in a process of their own (multi-process mode and not).

        Under gunicorn ``PROMETHEUS_MULTIPROC_DIR`` is set, so every ``inc``/``observe`` writes a memory-mapped
        file; the variable must be set before prometheus_client is imported, hence a fresh interpreter.
        """
        self.log(f"metrics cost: a create's metric calls, {METRICS_ITERATIONS} times, in a separate process")
        out: dict = {"iterations": METRICS_ITERATIONS}
        for mode in ("multiprocess", "in_memory"):
            env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
            with tempfile.TemporaryDirectory(prefix="bench-metrics-") as directory:
                if mode == "multiprocess":
                    env["PROMETHEUS_MULTIPROC_DIR"] = directory
                argv = [sys.executable, "-m", "benchmarks.metrics_cost", str(METRICS_ITERATIONS)]
                done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=600)
            out[mode] = json.loads(done.stdout.strip().splitlines()[-1])
            calls = ", ".join(f"{k} {v:.2f}" for k, v in out[mode]["us_per_call"].items())
            self.log(f"  {mode}: {out[mode]['us_per_create']:.2f} us per create ({calls})")
        return out

    def count_sync(self) -> dict:
        """Scenario 6: seconds to recount 10k dirty chats."""
        filled = self.fill()
        client = redis.Redis.from_url(self.settings.redis_url)
        try:
            client.delete(self.keys.dirty_chats, self.keys.dirty_applications)
            client.set(self.keys.counts_epoch, "bench")  # skip the one-off full recount after a fresh start
            client.sadd(self.keys.dirty_chats, *(dirty_chat_mark(filled["app_id"], c) for c in filled["sync_chats"]))
            self.log(f"scenario 6: count sync of {len(filled['sync_chats'])} dirty chats")
            report_ = CountSync(self.engine, client, self.keys, self.settings.counts_batch_size).run()
        finally:
            client.close()
        self.log(f"  {report_.chats_recounted} chats recounted in {report_.seconds:.2f}s")
        return {
            "dirty_chats": len(filled["sync_chats"]),
            "chats_recounted": report_.chats_recounted,
            "seconds": round(report_.seconds, 3),
            "rows_changed": report_.rows_changed,
        }

    def streams(self) -> dict:
        """Live streams (issue 15): idle streams one worker holds and its memory, delivery latency, creates beside.

        See benchmarks/streams.py for what each key measures and how the streams are held.
        """
        out: dict = {}
        # 1. Idle streams on one worker (GUNICORN_WORKERS=1), 10 per chat; the limits raised out of the way.
        count = streams.IDLE_STREAMS
        token, _, chats = self.new_app("streams-idle", max(count // 10, 1))
        limits = {"STREAM_MAX_PER_TENANT": str(count * 2), "STREAM_MAX_PER_PROCESS": str(count * 2)}
        # Its own memory record: this worker's peak is reported as stream_api_worker_peak_rss_mb, not as the
        # create path's api_worker peak (scenario 8).
        idle = Stack(self.namespace, self.log_dir / "streams-idle", PeakMemory(), workers=1, env=limits).start_api()
        try:
            worker = idle.worker_pids()[0]
            before = streams.rss_mb(worker)
            self.log(f"streams: opening {count:,} idle streams on one API worker ({before:.0f} MB before)")
            holder = streams.Holder(streams.stream_urls(idle.base_url, token, chats, count))
            opened = holder.open()
            counted = streams.wait_open(idle, opened["opened"])
            time.sleep(5)
            held = {
                "stream_idle_requested": count,
                "stream_idle_connections_per_worker": opened["opened"],
                "stream_idle_refused_or_failed": opened["failed"],
                "stream_idle_open_gauge": counted,
                "api_worker_rss_before_streams_mb": round(before, 1),
                "api_worker_rss_with_streams_mb": round(streams.rss_mb(worker), 1),
                "stream_api_worker_peak_rss_mb": round(peak_rss_mb(worker), 1),
            }
            held["kb_per_idle_stream"] = round(
                1024 * (held["api_worker_rss_with_streams_mb"] - before) / max(opened["opened"], 1), 1
            )
            held["stream_idle_still_open"] = holder.close()["still_open"]
            out.update(held)
            self.log(
                f"  held {opened['opened']:,} streams: worker RSS {held['api_worker_rss_with_streams_mb']} MB"
                f" (peak {held['stream_api_worker_peak_rss_mb']} MB, {held['kb_per_idle_stream']} KB per stream)"
            )
        finally:
            idle.stop()

        # 2. Delivery latency at 50% of the peak create rate, beside accept → row of the same run.
        points = self.results["scenarios"].get("create_message")
        token, app_id, chats = self.new_app("streams-latency", 16)
        paths = [f"/applications/{token}/chats/{n}/messages" for n in chats]
        if points:
            peak = max(p["rps"] for p in points)
        else:
            peak = self.measure(self.api, "create message (probe)", paths, HEADLINE_CONCURRENCY, method="POST",
                                body=MESSAGE_BODY)["rps"]  # fmt: skip
            self.wait_queues_empty()
        listeners = 2 * len(chats)
        holder = streams.Holder(streams.stream_urls(self.api.base_url, token, chats, listeners))
        holder.open()
        streams.wait_open(self.api, listeners)
        rate = peak * 0.5
        self.log(f"streams: delivery at {rate:.0f} creates/s with {listeners} listeners, {E2E_SECONDS:.0f}s")
        run = paced_posts(self.api.base_url, paths, MESSAGE_BODY, rate=rate, seconds=E2E_SECONDS)
        accepted = [a for a in run.answers if a.status == 201]
        data.wait_for(lambda: data.count_messages(self.engine, app_id) >= len(accepted), 120, 0.5, "rows")
        time.sleep(2)
        seen = holder.close()["arrivals"]
        first: dict[tuple[int, int], float] = {}
        for index, arrivals in seen.items():
            chat = chats[int(index) % len(chats)]
            for number, at in arrivals.items():
                key = (chat, int(number))
                first[key] = min(first.get(key, at), at)
        written = data.write_times(self.engine, app_id)
        delivery, rows, missing = [], [], 0
        for a in accepted:
            key = (chats[a.path_index % len(chats)], a.number)
            rows.append(written[key] - a.answered_at)
            if key in first:
                delivery.append(first[key] - a.answered_at)
            else:
                missing += 1
        delivery.sort()
        rows.sort()
        out.update(
            {
                "stream_delivery_rate_rps": round(rate, 1),
                "stream_delivery_achieved_rps": round(run.achieved_rps, 1),
                "stream_delivery_listeners": listeners,
                "stream_delivery_events": len(delivery),
                "stream_delivery_missing": missing,
                "stream_delivery_p50_ms": round(1000 * streams.quantile(delivery, 0.5), 1),
                "stream_delivery_p99_ms": round(1000 * streams.quantile(delivery, 0.99), 1),
                "stream_accept_to_row_p99_ms": round(1000 * streams.quantile(rows, 0.99), 1),
            }
        )
        out["stream_delivery_over_row_p99_ms"] = round(
            out["stream_delivery_p99_ms"] - out["stream_accept_to_row_p99_ms"], 1
        )
        self.log(
            f"  201 -> event p50 {out['stream_delivery_p50_ms']} ms, p99 {out['stream_delivery_p99_ms']} ms"
            f" (201 -> row p99 {out['stream_accept_to_row_p99_ms']} ms); {missing} events missing"
        )
        self.wait_queues_empty()

        # 3. Creates at c=64 with 1,000 open streams (one per loaded chat, the rest on quiet chats) vs none.
        token, _, chats = self.new_app("streams-load", 16 + 100)
        loaded, quiet = chats[:16], chats[16:]
        paths = [f"/applications/{token}/chats/{n}/messages" for n in loaded]
        urls = streams.stream_urls(self.api.base_url, token, loaded, streams.LOADED_LISTENERS)
        urls += streams.stream_urls(self.api.base_url, token, quiet, streams.BUSY_STREAMS - len(urls))
        # Alternating runs (none, open, none, open, …), the median of each: on a shared machine the load drifts, and
        # whichever side always ran second would carry the drift.
        post = {"method": "POST", "body": MESSAGE_BODY}
        runs: dict[str, list[dict]] = {"without": [], "with": []}
        kept = 0
        for attempt in range(max(REPEATS, 1)):
            self.log(f"streams: creates at c=64 without streams ({attempt + 1}/{max(REPEATS, 1)})")
            runs["without"].append(
                self.measure(self.api, "create message, no streams", paths, HEADLINE_CONCURRENCY, **post)
            )
            self.wait_queues_empty()
            holder = streams.Holder(urls)
            holder.open()
            streams.wait_open(self.api, len(urls))
            self.log(f"streams: creates at c=64 with {len(urls):,} streams open")
            try:
                runs["with"].append(
                    self.measure(self.api, "create message, streams open", paths, HEADLINE_CONCURRENCY, **post)
                )
            finally:
                kept = holder.close()["still_open"]
            self.wait_queues_empty()
        without, beside = (
            sorted(runs[side], key=lambda p: p["rps"])[len(runs[side]) // 2] for side in ("without", "with")
        )
        out.update(
            {
                "create_rps_without_streams": without["rps"],
                "create_rps_with_streams": beside["rps"],
                "create_p99_ms_with_streams": beside["p99_ms"],
                # CPU per create is steadier than req/s on a shared machine: the API's share, without and with.
                "api_cpu_us_per_create_without_streams": without.get("cpu_us_per_request", {}).get("api"),
                "api_cpu_us_per_create_with_streams": beside.get("cpu_us_per_request", {}).get("api"),
                "streams_open_during_creates": kept,
                "ratio_create_with_streams": round(beside["rps"] / without["rps"], 3) if without["rps"] else None,
            }
        )
        self.log(f"  {without['rps']:.0f} req/s without streams, {beside['rps']:.0f} with {kept} open")
        return out

    def worker_class(self) -> str:
        """The worker class gunicorn reported using (``chat_api.worker.ApiWorker``, set in gunicorn.conf.py)."""
        log = self.log_dir / "api" / "api.log"
        found = re.findall(r"Using worker: (\S+)", log.read_text()) if log.exists() else []
        return found[-1] if found else "unknown"

    # -- conditions ------------------------------------------------------------------------------------------
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


def _answers(url: str) -> bool:
    import requests

    try:
        requests.get(url, timeout=1)
        return True
    except requests.RequestException:
        return False


def main() -> None:
    """Parse arguments, run, write the JSON, the table and the plots, print the summary line last."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {','.join(SCENARIOS)}")
    parser.add_argument("--no-report", action="store_true", help="do not touch latest.json or docs/performance.md")
    args = parser.parse_args()
    only = {s for s in args.only.split(",") if s}
    unknown = only - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    results = Bench(only).run()
    results["summary"] = report.summarize(results)
    if args.no_report:
        out = RESULTS.with_name("partial.json.tmp")
        report.write_json(results, out)
    else:
        report.write_all(results, RESULTS)
        out = RESULTS
    print(report.summary_line(results["summary"], out.relative_to(ROOT)), flush=True)
