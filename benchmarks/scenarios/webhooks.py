"""Scenario ``webhooks``: signed webhooks under load, through one real dispatcher process to a local receiver.

Keys (in ``scenarios.webhooks``):

- ``webhook_delivery_p99_ms`` — from an event's commit (``events.committed_at``, MySQL's clock) to its first arrival
  at the receiver (the receiver's clock: the same machine), at 50% of the peak create rate, every event of a tenant
  with one endpoint; target ≤ 1,000 ms. With ``webhook_delivery_p50_ms`` and the events missing.
- ``webhook_deliveries_per_s`` — one dispatcher process draining a backlog (the dispatcher stopped while
  ``BENCH_WEBHOOK_BACKLOG`` events were written, then started): delivered events per second, over 16 chats of one
  endpoint.
- ``create_rps_with_webhooks`` / ``create_rps_without_webhooks`` and their ratio — creates at c=64 with every tenant
  of the run having an endpoint (the dispatcher delivering each create) vs the same load with the dispatcher
  stopped; alternating runs, the median of each; target ≥ 0.9.

The receiver (:mod:`benchmarks.webhook_receiver`) answers 204 at once: what is measured is the dispatcher's own
path (event log read, signing, HTTP) and what it takes from the machine's two cores.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING

from sqlalchemy import text

from benchmarks import data
from benchmarks.knobs import E2E_SECONDS, HEADLINE_CONCURRENCY, MESSAGE_BODY, REPEATS
from benchmarks.streams import quantile
from benchmarks.system import CpuMeter
from benchmarks.webhook_receiver import WebhookReceiver
from chat_common.tenancy.tokens import TokenSealer
from chat_common.tenancy.webhooks import EndpointSpec, WebhookEndpoints
from chat_common.webhooks.egress import EgressPolicy
from chat_devtools.load.paced import paced_posts
from chat_devtools.ports import free_port
from chat_devtools.processes import Process
from chat_devtools.sql import fetch_all

if TYPE_CHECKING:
    from benchmarks.runner import Bench

BACKLOG = int(os.environ.get("BENCH_WEBHOOK_BACKLOG", "20000"))
# The bench's receivers listen on loopback: the deployment's allow-list admits it (as tests do), over plain HTTP.
LOOPBACK = {"WEBHOOK_ALLOW_CIDRS": "127.0.0.0/8", "WEBHOOK_ALLOW_HTTP": "true"}


class Dispatcher:
    """The webhook dispatcher of the bench's namespace, as a real process."""

    def __init__(self, bench: Bench) -> None:
        env = {**bench.api.system.env, **LOOPBACK, "WEBHOOK_DISPATCHER_PORT": str(free_port())}
        log_dir = bench.log_dir / "webhooks"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.process = Process("webhook-dispatcher", [sys.executable, "-m", "webhook_dispatcher"], env, log_dir)

    def start(self) -> Dispatcher:
        self.process.start()
        return self

    def stop(self) -> None:
        self.process.stop()


def add_endpoint(bench: Bench, app_id: int, url: str, name: str = "bench") -> None:
    """An endpoint for every event of the application, from now on (the tenancy store, as the admin API does)."""
    policy = EgressPolicy.from_env(LOOPBACK)
    endpoints = WebhookEndpoints(bench.engine, TokenSealer(bench.settings.webhook_sealing_key), policy)
    endpoints.create(app_id, EndpointSpec.parse({"name": name, "url": url}, policy))


def commit_times(bench: Bench, app_id: int, after: int = 0) -> dict[str, float]:
    """webhook-id -> commit time (Unix seconds) of the application's events after ``after``."""
    rows = fetch_all(
        bench.engine,
        "SELECT id, UNIX_TIMESTAMP(committed_at) FROM events WHERE application_id = :a AND id > :after",
        a=app_id,
        after=after,
    )
    return {f"evt_{event_id}": float(at) for event_id, at in rows}


def log_head(bench: Bench) -> int:
    with bench.engine.connect() as conn:
        return int(conn.execute(text("SELECT last_id FROM event_sequence WHERE id = 1")).scalar_one())


def delivery(bench: Bench, receiver: WebhookReceiver, dispatcher: Dispatcher) -> dict:
    """Commit → receiver, at 50% of the peak create rate."""
    peak = bench.peak_create_rps("webhooks-probe")
    token, app_id, chats = bench.new_app("webhooks-latency", 16)
    add_endpoint(bench, app_id, receiver.url)
    start = log_head(bench)
    rate = peak * 0.5
    bench.log(f"webhooks: delivery at {rate:.0f} creates/s, {E2E_SECONDS:.0f}s")
    run = paced_posts(
        bench.api.base_url, bench.message_paths(token, chats), MESSAGE_BODY, rate=rate, seconds=E2E_SECONDS
    )
    accepted = sum(1 for a in run.answers if a.status == 201)
    data.wait_for(lambda: data.count_messages(bench.engine, app_id) >= accepted, 120, 0.5, "rows")
    committed = commit_times(bench, app_id, start)
    seen = _wait_delivered(bench, receiver, committed)
    latencies = sorted(seen[event] - at for event, at in committed.items() if event in seen)
    out = {
        "webhook_delivery_rate_rps": round(rate, 1),
        "webhook_delivery_achieved_rps": round(run.achieved_rps, 1),
        "webhook_delivery_events": len(committed),
        "webhook_delivery_missing": len(committed) - len(latencies),
        "webhook_delivery_p50_ms": round(1000 * quantile(latencies, 0.5), 1),
        "webhook_delivery_p99_ms": round(1000 * quantile(latencies, 0.99), 1),
    }
    bench.log(
        f"  commit -> receiver p50 {out['webhook_delivery_p50_ms']} ms, p99 {out['webhook_delivery_p99_ms']} ms;"
        f" {out['webhook_delivery_missing']} of {len(committed)} missing"
    )
    bench.wait_queues_empty()
    return out


def _wait_delivered(bench: Bench, receiver: WebhookReceiver, committed: dict[str, float], timeout: float = 300):
    """Every event of ``committed`` at the receiver (or the timeout); first arrival per webhook-id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = receiver.snapshot()
        if all(event in seen for event in committed):
            return seen
        time.sleep(0.5)
    return receiver.snapshot()


def throughput(bench: Bench, receiver: WebhookReceiver, dispatcher: Dispatcher) -> dict:
    """One dispatcher process draining a backlog of ``BACKLOG`` events over 16 chats of one endpoint."""
    token, app_id, chats = bench.new_app("webhooks-backlog", 16)
    add_endpoint(bench, app_id, receiver.url)
    start = log_head(bench)
    dispatcher.stop()
    bench.log(f"webhooks: writing a backlog of about {BACKLOG:,} events with the dispatcher stopped")
    paths = bench.message_paths(token, chats)
    rate = bench.peak_create_rps("webhooks-probe") * 0.8
    paced_posts(bench.api.base_url, paths, MESSAGE_BODY, rate=rate, seconds=BACKLOG / rate)
    bench.wait_queues_empty()
    committed = commit_times(bench, app_id, start)
    dispatcher.start()
    meter = CpuMeter({"dispatcher": [dispatcher.process.pid], "receiver": [receiver.process.pid]}).start()
    began = time.monotonic()
    seen = _wait_delivered(bench, receiver, committed, timeout=600)
    cores, elapsed = meter.stop(), time.monotonic() - began
    # From the first arrival to the last: the process's start and its first lease claim are not delivery.
    arrivals = sorted(seen[event] for event in committed if event in seen)
    rate = (len(arrivals) - 1) / max(arrivals[-1] - arrivals[0], 1e-9) if len(arrivals) > 1 else 0.0
    # CPU per delivery while draining (nothing else runs): the dispatcher's, the receiver's, MySQL's (its reads).
    per = {role: round(cores[role] * elapsed / max(len(arrivals), 1) * 1e6, 1) for role in ("dispatcher", "receiver")}
    per["mysql"] = round(cores["mysql"] * elapsed / max(len(arrivals), 1) * 1e6, 1)
    bench.log(f"  {rate:.0f} deliveries/s ({len(committed):,} events); CPU per delivery, us: {per}")
    return {
        "webhook_backlog_events": len(committed),
        "webhook_deliveries_per_s": round(rate, 1),
        "webhook_dispatcher_cpu_us_per_delivery": per["dispatcher"],
        "webhook_receiver_cpu_us_per_delivery": per["receiver"],
        "webhook_mysql_cpu_us_per_delivery": per["mysql"],
    }


def creates_beside_webhooks(bench: Bench, receiver: WebhookReceiver) -> dict:
    """Creates at c=64 on an application with an endpoint (the dispatcher delivering every create) vs on one without
    (the dispatcher idle); alternating runs, the median of each."""
    hooked_token, hooked_id, hooked_chats = bench.new_app("webhooks-load", 16)
    add_endpoint(bench, hooked_id, receiver.url)
    start = log_head(bench)  # the endpoint receives what commits from now on
    plain_token, _, plain_chats = bench.new_app("webhooks-none", 16)
    paths = {
        "with": bench.message_paths(hooked_token, hooked_chats),
        "without": bench.message_paths(plain_token, plain_chats),
    }
    post = {"method": "POST", "body": MESSAGE_BODY}
    runs: dict[str, list[dict]] = {"without": [], "with": []}
    for attempt in range(max(REPEATS, 1)):
        for side in ("without", "with"):
            bench.log(f"webhooks: creates at c=64 {side} an endpoint ({attempt + 1}/{max(REPEATS, 1)})")
            label = f"create message, {side} webhooks"
            runs[side].append(bench.measure(bench.api, label, paths[side], HEADLINE_CONCURRENCY, **post))
            bench.wait_queues_empty()
            _wait_delivered(bench, receiver, commit_times(bench, hooked_id, start), timeout=300)
    without, beside = (sorted(runs[side], key=lambda p: p["rps"])[len(runs[side]) // 2] for side in ("without", "with"))
    return {
        "create_rps_without_webhooks": without["rps"],
        "create_rps_with_webhooks": beside["rps"],
        "create_p99_ms_with_webhooks": beside["p99_ms"],
        "ratio_create_with_webhooks": round(beside["rps"] / without["rps"], 3) if without["rps"] else None,
    }


def run(bench: Bench) -> dict:
    """The figures under ``webhooks``."""
    receiver = WebhookReceiver(free_port()).start()
    dispatcher = Dispatcher(bench).start()
    try:
        out = delivery(bench, receiver, dispatcher)
        out.update(throughput(bench, receiver, dispatcher))
        out.update(creates_beside_webhooks(bench, receiver))
    finally:
        dispatcher.stop()
        receiver.stop()
    return {"webhooks": out}
