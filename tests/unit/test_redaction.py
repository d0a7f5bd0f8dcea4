"""Log redaction (chat_common.redaction): tokens, keys and passwords never reach a log line or a traceback."""

from __future__ import annotations

import io
import json
import logging

import pytest

from chat_common import logs
from chat_common.redaction import (
    RedactingFilter,
    Redactor,
    environment_secrets,
    install,
    redact,
    redact_path,
    token_ref,
)
from chat_common.tenancy.applications import new_token


def test_the_token_segment_of_a_path_becomes_a_digest_prefix():
    token = new_token()
    assert redact_path(f"/applications/{token}/chats/3/messages?page=2") == (
        f"/applications/{token_ref(token)}/chats/3/messages?page=2"
    )
    assert token_ref(token).startswith("tok:") and len(token_ref(token)) == 12
    assert redact_path("/applications") == "/applications"  # the collection: nothing to hide
    assert redact_path("/applications/not-a-real-one") == f"/applications/{token_ref('not-a-real-one')}"


def test_token_shaped_words_anywhere_are_replaced():
    tokens = [new_token() for _ in range(200)]
    for token in tokens:
        text = f"(1062, \"Duplicate entry '{token}' for key 'token'\")"
        assert token not in redact(text)
        assert token_ref(token) in redact(text)


@pytest.mark.parametrize(
    "word",
    [
        "0123456789abcdef0123456789abcdef",  # a hex request id or digest
        "chat_api_request_duration_second",  # a snake_case identifier of 32 characters
        "CHAT_API_REQUEST_DURATION_SECOND",
        "550e8400-e29b-41d4-a716-446655440000",  # a Kubernetes uid (36 characters)
    ],
)
def test_words_that_are_no_token_stay_readable(word):
    assert redact(f"x {word} y") == f"x {word} y"


def test_secrets_of_the_environment_are_blanked():
    env = {
        "DATABASE_URL": "mysql+pymysql://chat:s3cret-db-pass@db:3306/chat",
        "RABBITMQ_URLS": "amqp://u:rabbit-pass-1@a:5672/,amqp://u:rabbit-pass-2@b:5672/",
        "ADMIN_API_KEY": "adm-" + "k" * 40,
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "PASSWORD_SEED": "seed-value-123",
        "HOME": "/root",
    }
    secrets = environment_secrets(env)
    assert set(secrets) == {"s3cret-db-pass", "rabbit-pass-1", "rabbit-pass-2", "adm-" + "k" * 40, "seed-value-123"}
    line = f"connect failed: mysql://chat:s3cret-db-pass@db with key {env['ADMIN_API_KEY']}"
    assert Redactor(secrets)(line) == "connect failed: mysql://chat:***@db with key ***"


def _logger(handler: logging.Handler, name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def test_the_filter_redacts_arguments_and_tracebacks():
    token = new_token()
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    install([handler], RedactingFilter(Redactor(["hunter2-password"])))
    logger = _logger(handler, "test.redaction.text")
    logger.info("GET %s 200", f"/applications/{token}/chats")
    try:
        raise RuntimeError(f"lookup of {token} failed with hunter2-password")
    except RuntimeError:
        logger.exception("unhandled error")
    text = out.getvalue()
    assert token not in text and "hunter2-password" not in text
    assert token_ref(token) in text and "Traceback" in text and "RuntimeError" in text


def test_json_lines_carry_the_redacted_traceback(monkeypatch):
    token = new_token()
    monkeypatch.setenv("LOG_FORMAT", "json")
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.configure()
        [handler] = root.handlers
        out = io.StringIO()
        handler.setStream(out)
        try:
            raise ValueError(f"token {token}")
        except ValueError:
            logging.getLogger("test.redaction.json").exception("failed for /applications/%s", token)
        entry = json.loads(out.getvalue().splitlines()[-1])
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    assert token not in json.dumps(entry)
    assert token_ref(token) in entry["message"] and token_ref(token) in entry["exception"]


def test_installing_twice_adds_one_filter():
    handler = logging.StreamHandler(io.StringIO())
    install([handler])
    install([handler])
    assert len(handler.filters) == 1


def test_route_templates_stay_readable():
    assert redact("unhandled error on GET /applications/{token}/usage") == (
        "unhandled error on GET /applications/{token}/usage"
    )


def test_a_search_text_in_a_query_string_is_left_out():
    token = new_token()
    line = f'"GET /applications/{token}/chats/1/messages/search?page=2&query=my%20secret%20plan HTTP/1.1" 200'
    assert redact(line) == f'"GET /applications/{token_ref(token)}/chats/1/messages/search?page=2&query=… HTTP/1.1" 200'
