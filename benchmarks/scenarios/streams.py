"""Scenario ``streams``: live streams under load (see benchmarks/streams.py for what each key measures)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from benchmarks import data, streams
from benchmarks.knobs import E2E_SECONDS, HEADLINE_CONCURRENCY, MESSAGE_BODY, REPEATS
from benchmarks.system import PeakMemory, Stack, peak_rss_mb
from chat_devtools.load.paced import paced_posts

if TYPE_CHECKING:
    from benchmarks.runner import Bench


def live_streams(bench: Bench) -> dict:
    """Idle streams one worker holds and its memory, delivery latency, creates beside open streams (in this order:
    the keys of benchmarks/streams.py)."""
    return {**idle_streams(bench), **delivery(bench), **creates_beside_streams(bench)}


def idle_streams(bench: Bench) -> dict:
    """Idle streams one API worker holds open, and what they cost it in memory."""
    # 1. Idle streams on one worker (GUNICORN_WORKERS=1), 10 per chat; the limits raised out of the way.
    out: dict = {}
    count = streams.IDLE_STREAMS
    token, _, chats = bench.new_app("streams-idle", max(count // 10, 1))
    limits = {"STREAM_MAX_PER_TENANT": str(count * 2), "STREAM_MAX_PER_PROCESS": str(count * 2)}
    # Its own memory record: this worker's peak is reported as stream_api_worker_peak_rss_mb, not as the
    # create path's api_worker peak (scenario 8).
    idle = Stack(bench.namespace, bench.log_dir / "streams-idle", PeakMemory(), workers=1, env=limits).start_api()
    try:
        worker = idle.worker_pids()[0]
        before = streams.rss_mb(worker)
        bench.log(f"streams: opening {count:,} idle streams on one API worker ({before:.0f} MB before)")
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
        bench.log(
            f"  held {opened['opened']:,} streams: worker RSS {held['api_worker_rss_with_streams_mb']} MB"
            f" (peak {held['stream_api_worker_peak_rss_mb']} MB, {held['kb_per_idle_stream']} KB per stream)"
        )
    finally:
        idle.stop()
    return out


def delivery(bench: Bench) -> dict:
    """Delivery latency at 50% of the peak create rate, beside accept → row of the same run."""
    # 2. Delivery latency at 50% of the peak create rate, beside accept → row of the same run.
    out: dict = {}
    peak = bench.peak_create_rps("streams-probe")
    token, app_id, chats = bench.new_app("streams-latency", 16)
    paths = bench.message_paths(token, chats)
    listeners = 2 * len(chats)
    holder = streams.Holder(streams.stream_urls(bench.api.base_url, token, chats, listeners))
    holder.open()
    streams.wait_open(bench.api, listeners)
    rate = peak * 0.5
    bench.log(f"streams: delivery at {rate:.0f} creates/s with {listeners} listeners, {E2E_SECONDS:.0f}s")
    run = paced_posts(bench.api.base_url, paths, MESSAGE_BODY, rate=rate, seconds=E2E_SECONDS)
    accepted = [a for a in run.answers if a.status == 201]
    data.wait_for(lambda: data.count_messages(bench.engine, app_id) >= len(accepted), 120, 0.5, "rows")
    time.sleep(2)
    seen = holder.close()["arrivals"]
    first: dict[tuple[int, int], float] = {}
    for index, arrivals in seen.items():
        chat = chats[int(index) % len(chats)]
        for number, at in arrivals.items():
            key = (chat, int(number))
            first[key] = min(first.get(key, at), at)
    written = data.write_times(bench.engine, app_id)
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
    bench.log(
        f"  201 -> event p50 {out['stream_delivery_p50_ms']} ms, p99 {out['stream_delivery_p99_ms']} ms"
        f" (201 -> row p99 {out['stream_accept_to_row_p99_ms']} ms); {missing} events missing"
    )
    bench.wait_queues_empty()
    return out


def creates_beside_streams(bench: Bench) -> dict:
    """Creates at c=64 with 1,000 open streams (one per loaded chat, the rest on quiet chats) vs none."""
    # 3. Creates at c=64 with 1,000 open streams (one per loaded chat, the rest on quiet chats) vs none.
    out: dict = {}
    token, _, chats = bench.new_app("streams-load", 16 + 100)
    loaded, quiet = chats[:16], chats[16:]
    paths = [f"/applications/{token}/chats/{n}/messages" for n in loaded]
    urls = streams.stream_urls(bench.api.base_url, token, loaded, streams.LOADED_LISTENERS)
    urls += streams.stream_urls(bench.api.base_url, token, quiet, streams.BUSY_STREAMS - len(urls))
    # Alternating runs (none, open, none, open, …), the median of each: on a shared machine the load drifts, and
    # whichever side always ran second would carry the drift.
    post = {"method": "POST", "body": MESSAGE_BODY}
    runs: dict[str, list[dict]] = {"without": [], "with": []}
    kept = 0
    for attempt in range(max(REPEATS, 1)):
        bench.log(f"streams: creates at c=64 without streams ({attempt + 1}/{max(REPEATS, 1)})")
        runs["without"].append(
            bench.measure(bench.api, "create message, no streams", paths, HEADLINE_CONCURRENCY, **post)
        )
        bench.wait_queues_empty()
        holder = streams.Holder(urls)
        holder.open()
        streams.wait_open(bench.api, len(urls))
        bench.log(f"streams: creates at c=64 with {len(urls):,} streams open")
        try:
            runs["with"].append(
                bench.measure(bench.api, "create message, streams open", paths, HEADLINE_CONCURRENCY, **post)
            )
        finally:
            kept = holder.close()["still_open"]
        bench.wait_queues_empty()
    without, beside = (sorted(runs[side], key=lambda p: p["rps"])[len(runs[side]) // 2] for side in ("without", "with"))
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
    bench.log(f"  {without['rps']:.0f} req/s without streams, {beside['rps']:.0f} with {kept} open")
    return out


def run(bench: Bench) -> dict:
    """The figures under ``streams``."""
    return {"streams": live_streams(bench)}
