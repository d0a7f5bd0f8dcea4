"""Logging setup shared by every process: plain text locally, one JSON object per line with LOG_FORMAT=json."""

from __future__ import annotations

import json
import logging
import os
import sys

from chat_common import redaction


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:  # noqa: D102
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:  # the redacted traceback (chat_common.redaction) when the filter ran
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def configure() -> None:
    """Configure the root logger from LOG_LEVEL (default INFO) and LOG_FORMAT (text or json), redacting secrets."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("LOG_FORMAT", "text").lower() == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    redaction.install([handler])  # no token, key or password in any line (chat_common.redaction)
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())
    # pika logs every connection open and close at INFO; its warnings and errors are what matter.
    logging.getLogger("pika").setLevel(logging.WARNING)
    logging.getLogger("elastic_transport").setLevel(logging.WARNING)
