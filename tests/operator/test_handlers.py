"""The kopf glue, as far as it runs without an API server: settings, registration, outcome delivery, config."""

from __future__ import annotations

import kopf
import pytest

from chat_operator import handlers, kube
from chat_operator.config import ConfigError, OperatorConfig
from chat_operator.reconciler import Outcome

ENV = {"API_INTERNAL_URL": "http://chat-system-api.chat.svc:8080/"}


def test_config_reads_the_environment():
    config = OperatorConfig.from_env({**ENV, "WATCH_NAMESPACES": " team-a, team-b ,", "OPERATOR_PRIORITY": "7"})
    assert config.api_internal_url == "http://chat-system-api.chat.svc:8080"
    assert config.namespaces == ("team-a", "team-b") and not config.clusterwide
    assert config.priority == 7
    assert (config.metrics_port, config.liveness_endpoint) == (0, "http://0.0.0.0:8080/healthz")
    assert config.log_format == "text"
    assert OperatorConfig.from_env({**ENV, "LOG_FORMAT": "plain"}).log_format == "text"  # the former word
    assert OperatorConfig.from_env(ENV).clusterwide


def test_adoption_is_off_unless_the_environment_allows_it():
    assert OperatorConfig.from_env(ENV).allow_adoption is False
    assert OperatorConfig.from_env({**ENV, "ALLOW_ADOPTION": "true"}).allow_adoption is True
    assert OperatorConfig.from_env({**ENV, "ALLOW_ADOPTION": "False"}).allow_adoption is False
    with pytest.raises(ConfigError):
        OperatorConfig.from_env({**ENV, "ALLOW_ADOPTION": "yes please"})


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_the_operator_log_carries_no_token_or_password(log_format, capsys, monkeypatch):
    """kopf's handler on the root logger, as ``main`` sets it up: tokens (in messages, in kopf's per-object
    lines, in tracebacks) and the passwords of the environment's URLs never reach the output."""
    import logging

    from chat_common.redaction import token_ref
    from chat_common.tenancy.applications import new_token
    from chat_operator.__main__ import configure_logging

    password = "operator-db-password-1"
    monkeypatch.setenv("DATABASE_URL", f"mysql+pymysql://operator:{password}@db:3306/chat")
    token = new_token()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging(OperatorConfig.from_env({**ENV, "LOG_FORMAT": log_format}))
        kopf_logger = logging.getLogger("kopf.objects")
        kopf_logger.info("Patching with: {'spec': {'existingToken': '%s'}}", token)
        try:
            raise RuntimeError(f"cannot connect as operator:{password} with {token}")
        except RuntimeError:
            logging.getLogger("chat_operator").exception("reconcile failed for %s", token)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    err = capsys.readouterr().err
    assert token_ref(token) in err and "RuntimeError" in err
    assert token not in err and password not in err


def test_replicas_get_distinct_priorities_by_default():
    # kopf freezes every replica that sees a peer of the same priority.
    assert len({OperatorConfig.from_env(ENV).priority for _ in range(20)}) > 1


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"API_INTERNAL_URL": "chat-system-api:8080"},
        {**ENV, "LOG_FORMAT": "xml"},
        {**ENV, "STATUS_REFRESH_SECONDS": "1"},
    ],
    ids=["no-api-url", "no-scheme", "bad-log-format", "refresh-too-often"],
)
def test_config_refuses_nonsense(env):
    with pytest.raises(ConfigError):
        OperatorConfig.from_env(env)


def test_production_settings():
    settings = kopf.OperatorSettings()
    handlers.configure_settings(settings, OperatorConfig.from_env(ENV))
    assert settings.persistence.finalizer == kube.FINALIZER
    assert isinstance(settings.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert isinstance(settings.persistence.diffbase_storage, kopf.AnnotationsDiffBaseStorage)
    assert settings.scanning.disabled
    assert settings.posting.reporting_component == "chat-operator"
    assert settings.execution.max_workers == 4


def test_every_handler_is_registered():
    registry = kopf.OperatorRegistry()
    handlers.register(registry, reconciler=None, config=OperatorConfig.from_env(ENV), ping_database=lambda: True)
    # kopf has no public way to list a registry; its internal collections are the only view.
    changing = {(h.id, h.reason) for h in registry._changing.get_all_handlers()}
    assert {i for i, _ in changing} == {"provision", "adopt", "update/spec", "mark-deleting", "finalize"}
    timers = list(registry._spawning.get_all_handlers())
    assert [(t.id, t.interval) for t in timers] == [("refresh", 60.0)]
    activities = {h.activity.value for h in registry._activities.get_all_handlers()}
    assert {"startup", "authentication", "probe"} <= activities
    for handler in registry._changing.get_all_handlers():
        assert handler.selector.group == kube.GROUP and handler.selector.plural == kube.PLURAL


def test_delivering_success_patches_only_the_status():
    patch = kopf.Patch()
    handlers.deliver(Outcome(status={"phase": "Ready", "chatsCount": 2}), {}, patch, "apply")
    assert dict(patch) == {"status": {"phase": "Ready", "chatsCount": 2}}


def test_delivering_a_permanent_failure_stops_retries_but_keeps_the_status():
    patch = kopf.Patch()
    with pytest.raises(kopf.PermanentError):
        handlers.deliver(Outcome(status={"phase": "Failed"}, failure="InvalidSpec", permanent=True), {}, patch, "apply")
    assert patch["status"] == {"phase": "Failed"}


def test_delivering_a_retry_asks_kopf_to_come_back_later():
    with pytest.raises(kopf.TemporaryError) as info:
        handlers.deliver(Outcome(failure="Unavailable", retry_after=20), {}, kopf.Patch(), "apply")
    assert info.value.delay == 20
