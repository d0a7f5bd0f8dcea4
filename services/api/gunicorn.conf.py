"""gunicorn settings for the API: uvicorn workers (one event loop each), multi-process metrics, graceful shutdown.

Each worker runs the Falcon ASGI app on one uvloop event loop with the httptools parser: a create is one Redis
script call and one confirmed publish, awaited on the loop, with no thread hand-offs (docs/performance.md).
Connections are spread evenly over the workers by the kernel: each worker listens on a socket of its own bound to
the same port with ``SO_REUSEPORT`` (``post_fork``), and the master's socket leaves the group (``when_ready``).
With one shared socket, whichever event loop wakes first accepts a whole burst of new connections (64 keep-alive
clients all on one worker was measured), and keep-alive clients stay where they landed
(tests/integration/test_worker_spread.py; the benchmark records each worker's CPU share).
"""

import os
import shutil
import socket
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
reuse_port = True  # SO_REUSEPORT on the master's socket, so that each worker can bind the same port
wsgi_app = "chat_api.app:get_app()"


def on_starting(server):
    """Start every run with an empty metrics directory, or dead workers' samples would linger."""
    shutil.rmtree(_metrics_dir, ignore_errors=True)
    os.makedirs(_metrics_dir, exist_ok=True)


def when_ready(server):
    """Take the master's listening sockets out of the accept group: the workers' own sockets receive every connection.

    (``shutdown(SHUT_RD)`` stops a listening socket on Linux; the master never accepts anyway.)
    """
    for listener in server.LISTENERS:
        if listener.sock.family in (socket.AF_INET, socket.AF_INET6):
            listener.sock.shutdown(socket.SHUT_RD)


def post_fork(server, worker):
    """Give the worker a listening socket of its own on the same address (``SO_REUSEPORT``)."""
    own = []
    for listener in worker.sockets:
        if listener.sock.family not in (socket.AF_INET, socket.AF_INET6):
            own.append(listener)
            continue
        sock = socket.socket(listener.sock.family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(listener.sock.getsockname()[:2])
        sock.listen(backlog)
        sock.setblocking(False)
        own.append(sock)
    worker.sockets = own


def child_exit(server, worker):
    """Let the multi-process collector drop a dead worker's live gauges."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
