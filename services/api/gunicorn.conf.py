"""gunicorn settings for the API: uvicorn workers (one event loop each), multi-process metrics, graceful shutdown.

Each worker runs the Falcon ASGI app on one uvloop event loop with the httptools parser: a create is one Redis
script call and one confirmed publish, awaited on the loop, with no thread hand-offs (docs/performance.md).
Workers share the listening socket and each accepts as its loop has time, so keep-alive clients spread over
them with the load (tests/integration/test_worker_spread.py; the benchmark records each worker's CPU share).
"""

import os
import shutil
import tempfile

# prometheus_client reads this when first imported (in the workers): set it before anything imports it.
_metrics_dir = os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="chat-api-metrics-"))

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8080')}"
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
worker_class = "chat_api.worker.ApiWorker"
backlog = 2048
keepalive = 30
timeout = 30
graceful_timeout = 20
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "0"))
max_requests_jitter = 1000 if max_requests else 0
accesslog = os.environ.get("GUNICORN_ACCESS_LOG")  # off by default: it costs throughput
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
wsgi_app = "chat_api.app:get_app()"


def on_starting(server):
    """Start every run with an empty metrics directory, or dead workers' samples would linger."""
    shutil.rmtree(_metrics_dir, ignore_errors=True)
    os.makedirs(_metrics_dir, exist_ok=True)


def child_exit(server, worker):
    """Let the multi-process collector drop a dead worker's live gauges."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
