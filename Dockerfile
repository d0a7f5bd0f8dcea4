# Every image of the chat system, one target each (build context: the repository root):
#   docker build --target api            -t chat-system/api .             (also runs `python -m chat_common.ops.migrate`)
#   docker build --target chat-writer    -t chat-system/chat-writer .
#   docker build --target message-writer -t chat-system/message-writer .
#   docker build --target webhook-dispatcher -t chat-system/webhook-dispatcher .
#   docker build --target counter-cron   -t chat-system/counter-cron .
#   docker build --target operator       -t chat-system/operator .
# `make images` builds them all. Each image holds the pinned dependencies (requirements.txt), chat-common and its own
# package, installed normally into /opt/venv; it runs as UID 10001 on a read-only root filesystem.

# -- build: pinned dependencies once, then a wheel of every package of the repository ------------------------------
FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SITE_PACKAGES=/opt/venv/lib/python3.11/site-packages
COPY requirements.txt /tmp/requirements.txt
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements.txt
COPY common/ /src/common/
COPY services/ /src/services/
COPY operator/ /src/operator/
RUN /opt/venv/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels /src/common /src/services/api \
        /src/services/chat-writer /src/services/message-writer /src/services/webhook-dispatcher \
        /src/services/counter-cron /src/operator

# -- one virtualenv per image: the dependencies plus chat-common and that service's package -------------------------
# The packages' bytecode is compiled here because the root filesystem is read-only at run time.
FROM build AS api-venv
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps /wheels/chat_common-*.whl /wheels/chat_api-*.whl \
    && install -D -m 0644 /src/services/api/gunicorn.conf.py /app/api/gunicorn.conf.py \
    && /opt/venv/bin/python -m compileall -q "$SITE_PACKAGES/chat_common" "$SITE_PACKAGES/chat_api" /app

FROM build AS chat-writer-venv
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps /wheels/chat_common-*.whl /wheels/chat_writer-*.whl \
    && /opt/venv/bin/python -m compileall -q "$SITE_PACKAGES/chat_common" "$SITE_PACKAGES/chat_writer"

FROM build AS message-writer-venv
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps /wheels/chat_common-*.whl /wheels/message_writer-*.whl \
    && /opt/venv/bin/python -m compileall -q "$SITE_PACKAGES/chat_common" "$SITE_PACKAGES/message_writer"

FROM build AS webhook-dispatcher-venv
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps /wheels/chat_common-*.whl /wheels/webhook_dispatcher-*.whl \
    && /opt/venv/bin/python -m compileall -q "$SITE_PACKAGES/chat_common" "$SITE_PACKAGES/webhook_dispatcher"

FROM build AS counter-cron-venv
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps /wheels/chat_common-*.whl /wheels/counter_cron-*.whl \
    && /opt/venv/bin/python -m compileall -q "$SITE_PACKAGES/chat_common" "$SITE_PACKAGES/counter_cron"

FROM build AS operator-venv
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps /wheels/chat_common-*.whl /wheels/chat_operator-*.whl \
    && /opt/venv/bin/python -m compileall -q "$SITE_PACKAGES/chat_common" "$SITE_PACKAGES/chat_operator"

# -- runtime: what every image shares ----------------------------------------------------------------------------
FROM python:3.11.14-slim-bookworm AS runtime
RUN groupadd --system --gid 10001 chat \
    && useradd --system --uid 10001 --gid chat --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin chat
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /app
USER 10001:10001

# -- the count sync: one run per container (the Kubernetes CronJob); `--every SECONDS` loops (compose) --------------
# No HEALTHCHECK: a one-shot job with no port; the CronJob (or compose's restart policy) tracks its exit status.
FROM runtime AS counter-cron
COPY --from=counter-cron-venv /opt/venv /opt/venv
ENTRYPOINT ["python", "-m", "counter_cron"]

# -- the writers: consume their RabbitMQ queue in batches until SIGTERM; /metrics on METRICS_PORT -----------------
FROM runtime AS writer
ENV METRICS_PORT=9090
EXPOSE 9090
# A writer has no HTTP API: the metrics endpoint answering is the sign of a live process.
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/metrics' % os.environ['METRICS_PORT'], timeout=2)"]

FROM writer AS chat-writer
COPY --from=chat-writer-venv /opt/venv /opt/venv
ENTRYPOINT ["python", "-m", "chat_writer"]

FROM writer AS message-writer
COPY --from=message-writer-venv /opt/venv /opt/venv
ENTRYPOINT ["python", "-m", "message_writer"]

# -- the webhook dispatcher: delivers tenants' webhooks from the event log until SIGTERM; /metrics, /healthz and
# /readyz on WEBHOOK_DISPATCHER_PORT ------------------------------------------------------------------------------
FROM runtime AS webhook-dispatcher
COPY --from=webhook-dispatcher-venv /opt/venv /opt/venv
ENV WEBHOOK_DISPATCHER_PORT=9090
EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ['WEBHOOK_DISPATCHER_PORT'], timeout=2)"]
ENTRYPOINT ["python", "-m", "webhook_dispatcher"]

# -- the operator (kopf): reconciles chat-system.io/v1 Application objects; /healthz on 8080, /metrics on 9090 -----
FROM runtime AS operator
COPY --from=operator-venv /opt/venv /opt/venv
ENV METRICS_PORT=9090
EXPOSE 8080 9090
HEALTHCHECK --interval=30s --timeout=3s --start-period=30s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
ENTRYPOINT ["python", "-m", "chat_operator"]

# -- the REST API: gunicorn with services/api/gunicorn.conf.py (at /app/api/gunicorn.conf.py in the image) ---------
# Last, so that a plain `docker build .` builds the API image.
FROM runtime AS api
COPY --from=api-venv /opt/venv /opt/venv
COPY --from=api-venv /app /app
ENV HOST=0.0.0.0 \
    PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=2)"]
ENTRYPOINT ["gunicorn", "--config", "/app/api/gunicorn.conf.py"]
