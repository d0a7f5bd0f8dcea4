"""gunicorn settings for the API: threaded workers, multi-process Prometheus metrics, graceful shutdown.

Threads (gthread) rather than sync workers: a create spends most of its time waiting for Redis and for the
broker's publish confirm, and threads let many requests of one process share that wait (and one AMQP
channel). ``GUNICORN_WORKER_CLASS=gevent`` (with gevent installed) served 1.1-1.5x the creates for up to
25% less CPU each on 2 cores, but makes read tail latency under overload 2-4x worse and lets an idle
keep-alive client hold a worker's shutdown for the whole graceful timeout: trade-off in docs/performance.md.
"""

import os
import shutil
import tempfile

# prometheus_client reads this when first imported (in the workers): set it before anything imports it.
_metrics_dir = os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="chat-api-metrics-"))

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8080')}"
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gthread")
threads = int(os.environ.get("GUNICORN_THREADS", "16"))  # gthread only
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
