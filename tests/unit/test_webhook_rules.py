"""The webhook dispatcher's rules, without a network or a database: signatures (checked against the Standard Webhooks
reference library), the retry schedule, what an answer means, ``Retry-After``, the body, the egress checks that need
no DNS, and the resolver's filter (on a fake resolver)."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import json
import socket

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from chat_common.webhooks.egress import EgressPolicy
from chat_common.wire.event_pages import LoggedEvent
from webhook_dispatcher.config import DispatcherConfig
from webhook_dispatcher.delivery import CheckedResolver, EgressRefused, Outcome, Sender, classify
from webhook_dispatcher.endpoint_worker import Health, envelope, message_id
from webhook_dispatcher.schedule import DEFAULT_SCHEDULE, parse_schedule, retry_after_seconds, retry_delay
from webhook_dispatcher.signing import new_secret, secret_key, signature, signed_headers
from webhook_dispatcher.store import Endpoint

NOW = datetime.datetime(2026, 12, 7, 12, 0, 0, tzinfo=datetime.UTC)


# -- signatures -------------------------------------------------------------------------------------------------------
def test_a_signed_delivery_verifies_with_the_reference_library_and_only_with_its_secret():
    secret, body = new_secret(), b'{"type":"chat.created"}'
    timestamp = int(datetime.datetime.now(datetime.UTC).timestamp())
    headers = signed_headers([secret], "evt_7", timestamp, body)
    assert headers["webhook-id"] == "evt_7" and headers["webhook-timestamp"] == str(timestamp)
    assert Webhook(secret).verify(body, headers) == {"type": "chat.created"}
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + b" ", headers)


def test_during_a_rotation_either_secret_verifies():
    old, new, body = new_secret(24), new_secret(64), b"{}"
    timestamp = int(datetime.datetime.now(datetime.UTC).timestamp())
    headers = signed_headers([new, old], "evt_1", timestamp, body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(body, headers)
    Webhook(new).verify(body, headers)


def test_the_signature_is_hmac_sha256_of_id_timestamp_body_with_the_decoded_secret():
    key = bytes(range(32))
    secret = "whsec_" + base64.b64encode(key).decode()
    assert secret_key(secret) == key
    assert signature(secret, "evt_1", 1700000000, b"{}") == Webhook(key).sign(
        "evt_1", datetime.datetime.fromtimestamp(1700000000, datetime.UTC), b"{}"
    )


@pytest.mark.parametrize("bad", ["", "abc", "whsec_", "whsec_!!!", "whsec_" + base64.b64encode(b"short").decode()])
def test_a_malformed_secret_is_refused(bad):
    with pytest.raises(ValueError):
        secret_key(bad)


# -- the schedule -----------------------------------------------------------------------------------------------------
def test_the_default_schedule_is_svixs_and_lasts_more_than_a_day():
    assert DEFAULT_SCHEDULE == (5, 300, 1800, 7200, 18000, 36000, 36000) and sum(DEFAULT_SCHEDULE) > 86400
    assert parse_schedule(None) == parse_schedule(" ") == DEFAULT_SCHEDULE
    assert parse_schedule("1, 2,0.5") == (1.0, 2.0, 0.5)
    for bad in ("0", "-1,2", "a"):
        with pytest.raises(ValueError):
            parse_schedule(bad)


def test_each_failure_takes_the_next_step_until_the_schedule_runs_out():
    schedule = (1.0, 2.0, 3.0)
    assert [retry_delay(schedule, n) for n in (1, 2, 3, 4, 9)] == [1.0, 2.0, 3.0, None, None]


# -- what an answer means ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "status, outcome",
    [
        (200, Outcome.DELIVERED),
        (204, Outcome.DELIVERED),
        (299, Outcome.DELIVERED),
        (410, Outcome.GONE),
        (408, Outcome.RETRY),
        (429, Outcome.RETRY),
        (500, Outcome.RETRY),
        (502, Outcome.RETRY),
        (503, Outcome.RETRY),
        (400, Outcome.FAILED),
        (401, Outcome.FAILED),
        (404, Outcome.FAILED),
        (422, Outcome.FAILED),
        (301, Outcome.FAILED),
        (302, Outcome.FAILED),
        (307, Outcome.FAILED),
        (101, Outcome.FAILED),
    ],
)
def test_status_classification(status, outcome):
    assert classify(status, None, NOW).outcome is outcome


def test_retry_after_counts_on_429_and_503_only():
    assert classify(429, "7", NOW).retry_after == 7.0
    assert classify(503, "7", NOW).retry_after == 7.0
    assert classify(500, "7", NOW).retry_after is None
    assert classify(408, "7", NOW).retry_after is None


def test_retry_after_reads_seconds_and_http_dates_and_is_capped():
    assert retry_after_seconds("120", NOW) == 120.0
    assert retry_after_seconds("Mon, 07 Dec 2026 12:01:30 GMT", NOW) == 90.0
    assert retry_after_seconds("Mon, 07 Dec 2026 11:00:00 GMT", NOW) == 0.0  # in the past: at once
    assert retry_after_seconds("99999999", NOW) == 36000.0
    assert retry_after_seconds("100", NOW, cap=10) == 10.0
    for unreadable in (None, "", "soon", "-5", "1.5"):
        assert retry_after_seconds(unreadable, NOW) is None


# -- the body ---------------------------------------------------------------------------------------------------------
def test_the_body_wraps_the_event_as_the_api_shows_it():
    event = LoggedEvent(42, "message.updated", 3, 5, 7, NOW, None, None, "hello", 9)
    body = json.loads(envelope(event))
    assert body == {"type": "message.updated", "timestamp": "2026-12-07T12:00:00.000000Z", "data": event.public()}
    assert body["data"] == {
        "id": "42",
        "type": "message.updated",
        "chat_number": 3,
        "message_number": 5,
        "version": 7,
        "committed_at": "2026-12-07T12:00:00.000000Z",
        "superseded": True,
        "resource": {"message_number": 5, "body": "hello"},
    }
    assert message_id(event) == "evt_42"


# -- state ------------------------------------------------------------------------------------------------------------
def _endpoint(state: str = "healthy") -> Endpoint:
    return Endpoint(1, 2, "main", "https://example.com/h?k=secret", frozenset(), "v1.x", None, None, 0, state, None)


def test_health_turns_failing_on_the_first_failure_and_healthy_on_a_success():
    health = Health(_endpoint())
    assert not health.failing and not health.dirty
    health.failure(NOW, "HTTP 500")
    assert health.failing and health.failing_since == NOW and health.due()  # a change: written at once
    health.written()
    later = NOW + datetime.timedelta(seconds=5)
    health.failure(later, "HTTP 502")
    assert health.failing_since == NOW and health.dirty and not health.due()  # no change: at most once a second
    health.success(later)
    assert not health.failing and health.failing_since is None and health.due()


def test_logs_name_the_host_never_the_url():
    assert _endpoint().host == "example.com"


# -- egress -----------------------------------------------------------------------------------------------------------
def test_the_sender_refuses_what_needs_no_dns():
    strict = Sender(EgressPolicy(), 1, 1024, 1)
    assert "scheme http" in strict.refusal("http://example.com/")
    assert "loopback" in strict.refusal("https://127.0.0.1/")
    assert "private" in strict.refusal("https://10.1.2.3/")
    assert "link-local" in strict.refusal("https://[fe80::1]/")
    assert strict.refusal("https://169.254.169.254/") is not None
    assert strict.refusal("https://example.com/") is None  # a name: the resolver decides
    loose = Sender(EgressPolicy(allow=(ipaddress.ip_network("127.0.0.0/8"),), allow_http=True), 1, 1024, 1)
    assert loose.refusal("http://127.0.0.1:8080/") is None


class _FixedResolver:
    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses

    async def resolve(self, host, port=0, family=socket.AF_INET):
        return [
            {"hostname": host, "host": a, "port": port, "family": family, "proto": 0, "flags": 0}
            for a in self.addresses
        ]

    async def close(self) -> None:
        pass


def test_the_resolver_keeps_only_allowed_addresses_and_refuses_a_name_with_none():
    policy = EgressPolicy()
    mixed = CheckedResolver(policy, _FixedResolver("10.0.0.1", "93.184.216.34"))  # type: ignore[arg-type]
    assert [r["host"] for r in asyncio.run(mixed.resolve("example.com", 443))] == ["93.184.216.34"]
    private = CheckedResolver(policy, _FixedResolver("127.0.0.1", "::1"))  # type: ignore[arg-type]
    with pytest.raises(EgressRefused, match="no allowed address"):
        asyncio.run(private.resolve("rebound.example", 443))


def test_the_configuration_reads_the_environment():
    config = DispatcherConfig.from_env(
        {
            "DATABASE_URL": "mysql+pymysql://u@db/x",
            "WEBHOOK_SEALING_KEY": "k" * 32,
            "WEBHOOK_RETRY_SCHEDULE": "1,2",
            "WEBHOOK_LEASE_SECONDS": "6",
            "WEBHOOK_POLL_INTERVAL_MS": "250",
            "WEBHOOK_ALLOW_CIDRS": "127.0.0.0/8",
            "WEBHOOK_ALLOW_HTTP": "true",
        }
    )
    assert config.retry_schedule == (1.0, 2.0) and config.lease_seconds == 6 and config.renew_seconds == 2
    assert config.poll_interval_seconds == 0.25 and config.egress.allow_http and config.max_in_flight == 16
    assert config.timeout_seconds == 10 and config.max_response_bytes == 65536 and config.page_size == 200
    assert config.disable_after_seconds == 5 * 86400 > sum(DEFAULT_SCHEDULE)
    assert "k" * 32 not in repr(config)
