"""The knobs of a benchmark run (environment variables, see benchmarks/run.py) and the fixed request bodies."""

from __future__ import annotations

import os
from pathlib import Path

from chat_common.config import Settings
from chat_devtools.processes import ROOT

SECONDS = float(os.environ.get("BENCH_SECONDS", "5"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
CONCURRENCY = [int(c) for c in os.environ.get("BENCH_CONCURRENCY", "1,16,64,256").split(",")]
HEADLINE_CONCURRENCY = 64
DRAIN_MESSAGES = int(os.environ.get("BENCH_DRAIN_MESSAGES", "100000"))
# Upserts per bundle in the drain scenario's queue, as the coalescing API sends them (chat_common.wire.bundles); the
# scenario also drains the same upserts as single messages, the format without coalescing.
DRAIN_BUNDLE = int(os.environ.get("BENCH_DRAIN_BUNDLE", "32"))
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

# The namespace uses the production defaults (tests shorten some of them).
PRODUCTION = Settings()
