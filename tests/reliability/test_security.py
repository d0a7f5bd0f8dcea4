"""Security: unguessable tokens, tenant isolation on every endpoint, admin-only operations, rate limits,
security headers, error bodies without internals, and secrets that never reach a log.

Operations are taken from the OpenAPI document, so an endpoint added later is covered without editing this file.
"""

from __future__ import annotations

import inspect
import itertools
import json
import math
import re
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from string import ascii_letters, digits

import pytest
import requests
from sqlalchemy import text

from chat_common.tenancy import applications as tenancy
from chat_devtools.http import Api, wait_for
from chat_devtools.namespace import Namespace
from chat_devtools.processes import System
from tests.conftest import LOG_ROOT, own_system

DOCUMENT = Path(__file__).resolve().parents[2] / "services/api/chat_api/openapi.json"
METHODS = ("get", "post", "put", "patch", "delete")
TOKEN = re.compile(r"[A-Za-z0-9_-]{32}")
ALPHABET = ascii_letters + digits + "-_"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
LEAKS = ("Traceback", "sqlalchemy", "pymysql", "SELECT", "INSERT", "OperationalError", 'File "/', "mysql", "@127.0.0.1")


def _operations() -> list[tuple[str, str, dict]]:
    document = json.loads(DOCUMENT.read_text())
    return [(m, path, op) for path, item in document["paths"].items() for m, op in item.items() if m in METHODS]


def _chi_square_limit(dof: int, z: float = 4.753) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile; z = 4.753 is a one-sided p of 1e-6."""
    k = 2 / (9 * dof)
    return dof * (1 - k + z * math.sqrt(k)) ** 3


def _chi_square(counts: Counter, total: int) -> float:
    expected = total / len(ALPHABET)
    return sum((counts.get(symbol, 0) - expected) ** 2 / expected for symbol in ALPHABET)


# -- tokens ------------------------------------------------------------------------------------------------------
def test_tokens_come_from_the_os_csprng_with_at_least_128_bits(security_results):
    source = inspect.getsource(tenancy.new_token)
    assert "secrets.token_urlsafe(TOKEN_BYTES)" in source
    assert tenancy.TOKEN_BYTES * 8 >= 128
    security_results.add(check=f"token entropy source: secrets.token_urlsafe, {tenancy.TOKEN_BYTES * 8} bits",
                         outcome="pass")  # fmt: skip


def test_tokens_are_unique_full_length_and_uniformly_distributed(security_results):
    n = 20_000
    tokens = [tenancy.new_token() for _ in range(n)]
    assert len(set(tokens)) == n
    assert all(TOKEN.fullmatch(t) for t in tokens)
    limit = _chi_square_limit(len(ALPHABET) - 1)
    overall = _chi_square(Counter("".join(tokens)), n * 32)
    worst = max(_chi_square(Counter(t[i] for t in tokens), n) for i in range(32))
    security_results.add(
        check=f"{n} tokens: unique, 32 base64url characters; character frequencies chi-square {overall:.0f}, "
        f"worst single position {worst:.0f} (63 degrees of freedom, limit {limit:.0f} at p=1e-6)",
        outcome="pass" if overall < limit and worst < limit else "fail",
    )
    assert overall < limit
    assert worst < limit  # 24 random bytes fill all 32 characters: no position is less random than another


def test_tokens_issued_by_the_api_share_nothing(admin_api, security_results):
    tokens = [admin_api.new_application(f"entropy {i}") for i in range(40)]
    assert len(set(tokens)) == len(tokens) and all(TOKEN.fullmatch(t) for t in tokens)
    for a, b in itertools.pairwise(tokens):
        assert a[:4] != b[:4], (a, b)  # the same first 4 characters by chance: p ~ 40 / 64^4
    security_results.add(check="40 tokens issued by the API: unique, full length, no shared prefix", outcome="pass")


# -- tenant isolation --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def alice(admin_api) -> dict:
    token = admin_api.new_application("alice")
    chats = [admin_api.new_chat(token, f"alice room {i}") for i in range(3)]
    numbers = [admin_api.new_message(token, chats[-1], f"alice secret {i}") for i in range(3)]
    for n in numbers:
        admin_api.wait_message(token, chats[-1], n)
    return {"token": token, "chat": chats[-1], "message": numbers[-1]}


def _alice_state(engine, token: str) -> list:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                text(
                    "SELECT a.name, c.number, c.name, m.number, m.body FROM applications a "
                    "JOIN chats c ON c.application_id = a.id LEFT JOIN messages m ON m.chat_id = c.id "
                    "WHERE a.token_digest = SHA2(:t, 256) ORDER BY c.number, m.number"
                ),
                {"t": token},
            )
        ]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        (m, p)
        for m, p, _ in _operations()
        if ("{token}" in p or p == "/application" or p.startswith("/application/"))
        and (m, p) != ("delete", "/applications/{token}")
    ],
)
def test_another_token_never_reaches_alices_data(method, path, alice, admin_api, reliability_engine, security_results):
    bob = admin_api.new_application("bob")
    before = _alice_state(reliability_engine, alice["token"])
    url = path.replace("{token}", bob).replace("{chat_number}", str(alice["chat"]))
    url = url.replace("{message_number}", str(alice["message"]))
    body = {"name": "bob was here", "body": "bob was here"} if method in ("post", "put", "patch") else None
    # The header form carries Bob's token in Authorization (instead of the admin key the client holds).
    headers = {} if "{token}" in path else {"Authorization": f"Bearer {bob}"}
    resp = admin_api.request(
        method.upper(), url, json=body, params={"query": "alice"} if "search" in path else None, headers=headers
    )
    row = security_results.add(check=f"Bob's token on {method.upper()} {path}", got=resp.status_code, outcome="fail")
    assert resp.status_code < 500, resp.text
    assert "alice" not in resp.text and alice["token"] not in resp.text, resp.text
    if "{chat_number}" in path:
        assert resp.status_code == 404, resp.text  # Bob has no such chat
    time.sleep(0.3)  # let a wrongly routed asynchronous write land before looking
    assert _alice_state(reliability_engine, alice["token"]) == before
    row["outcome"] = "pass"


# -- admin key ---------------------------------------------------------------------------------------------------
def _bad_authorizations(key: str) -> dict[str, dict]:
    return {
        "no Authorization header": {},
        "wrong key": {"Authorization": "Bearer wrong"},
        "empty bearer": {"Authorization": "Bearer "},
        "key with one character more": {"Authorization": f"Bearer {key}x"},
        "key without its last character": {"Authorization": f"Bearer {key[:-1]}"},
        "key in another case": {"Authorization": f"Bearer {key.swapcase()}"},
        "key as Basic credentials": {"Authorization": f"Basic {key}"},
        "key without a scheme": {"Authorization": key},
        "key in another header": {"X-Api-Key": key},
    }


ADMIN_OPERATIONS = [(m, p) for m, p, op in _operations() if {"adminKey": []} in (op.get("security") or [])]
# What a request to an admin operation carries (default: a name); tenant management takes its own fields.
ADMIN_BODIES = {
    "/applications/{token}/rotate-token": {},
    "/applications/{token}/limits": {"max_chats": 5},
    "/applications/{token}/cors-origins": {"origins": ["https://app.example"]},
    "/applications/{token}/webhooks": {"name": "hook", "url": "https://receiver.example/hook"},
    "/applications/{token}/webhooks/{webhook_id}": {"enabled": False},
    "/applications/{token}/webhooks/{webhook_id}/rotate-secret": {},
    "/applications/{token}/webhooks/{webhook_id}/replay": {},
}


def _admin_target(admin_api, path: str) -> str:
    """``path`` for a request with the right key: a new application, and for an endpoint's routes an endpoint of it
    (replay from the event log's current cursor)."""
    token = admin_api.new_application("deleted") if "{token}" in path else ""
    target = path.replace("{token}", token)
    if "{webhook_id}" in path:
        hook = {"name": "hook", "url": "https://receiver.example/hook"}
        assert admin_api.post(f"/applications/{token}/webhooks", json=hook).status_code == 201
        target = target.replace("{webhook_id}", "hook")
        if target.endswith("/replay"):
            target += "?from=" + admin_api.get(f"/applications/{token}/events").json()["next"]
    return target


@pytest.mark.parametrize(("method", "path"), ADMIN_OPERATIONS)
def test_admin_operations_refuse_missing_or_wrong_keys(method, path, admin_api, anonymous_api, admin_key,
                                                       security_results):  # fmt: skip
    body = ADMIN_BODIES.get(path, {"name": "x"})
    for what, headers in _bad_authorizations(admin_key).items():
        token = admin_api.new_application("kept") if "{token}" in path else ""
        target = path.replace("{token}", token)
        resp = anonymous_api.request(method.upper(), target, json=body, headers=headers)
        security_results.add(check=f"{method.upper()} {path} with {what}", got=resp.status_code,
                             outcome="pass" if resp.status_code == 401 else "fail")  # fmt: skip
        assert resp.status_code == 401, (what, resp.text)
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert resp.json() == {"error": "this operation needs the admin API key as a Bearer token"}
        if token:
            assert admin_api.get(f"/applications/{token}").status_code == 200  # still there, untouched
    answer = admin_api.request(method.upper(), _admin_target(admin_api, path), json=body)
    assert answer.status_code in (200, 201, 204), answer.text


def test_admin_key_is_compared_in_constant_time(security_results):
    from chat_api.resources import params

    assert "hmac.compare_digest" in inspect.getsource(params.require_admin)
    security_results.add(check="admin key compared with hmac.compare_digest (constant time)", outcome="pass")


# -- rate limit --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def limited() -> Iterator[System]:
    """A system of its own with RATE_LIMIT_PER_SECOND=5."""
    with own_system("rate", extra_env={"RATE_LIMIT_PER_SECOND": "5"}) as system:
        yield system


def _tally(statuses: list[int]) -> str:
    return ", ".join(f"{n}x {status}" for status, n in sorted(Counter(statuses).items()))


def _at_second_start() -> None:
    time.sleep(1 - time.time() % 1 + 0.01)


def test_rate_limit_is_per_token_with_retry_after(limited, security_results):
    api = Api(limited.base_url)
    a, b = api.new_application("busy"), api.new_application("quiet")
    _at_second_start()
    burst = [api.get(f"/applications/{a}") for _ in range(12)]
    others = [api.get(f"/applications/{b}").status_code for _ in range(5)]
    statuses = [r.status_code for r in burst]
    security_results.add(check=f"RATE_LIMIT_PER_SECOND=5, 12 requests in one second: {_tally(statuses)}; "
                         f"another token meanwhile: {_tally(others)}", outcome="fail")  # fmt: skip
    # The burst may straddle two one-second windows: at most 5 pass in each.
    assert 429 in statuses and statuses.count(200) <= 10
    limited_resp = next(r for r in burst if r.status_code == 429)
    assert int(limited_resp.headers["Retry-After"]) >= 1
    assert limited_resp.json()["error"].startswith("more than 5 requests per second")
    for name, value in SECURITY_HEADERS.items():
        assert limited_resp.headers[name] == value
    assert 429 not in others  # another application's budget is its own
    assert api.post(f"/applications/{a}/chats", json={"name": "x"}).status_code in (201, 429)
    _at_second_start()
    assert api.get(f"/applications/{a}").status_code == 200  # a new second, a new budget
    assert all(api.get("/healthz").status_code == 200 for _ in range(20))  # only token routes are limited
    security_results.rows[-1]["outcome"] = "pass"


def test_no_rate_limit_when_unset(admin_api, security_results):
    token = admin_api.new_application("unlimited")
    statuses = {admin_api.get(f"/applications/{token}").status_code for _ in range(30)}
    security_results.add(check="30 requests in a burst with RATE_LIMIT_PER_SECOND unset: all 200",
                         outcome="pass" if statuses == {200} else "fail")  # fmt: skip
    assert statuses == {200}


# -- headers and error bodies ------------------------------------------------------------------------------------
def test_security_headers_on_every_kind_of_answer(admin_api, anonymous_api, security_results):
    token = admin_api.new_application("headers")
    answers = {
        "200 read": admin_api.get(f"/applications/{token}"),
        "201 create": admin_api.post(f"/applications/{token}/chats", json={"name": "x"}),
        "401": anonymous_api.get("/applications"),
        "404": admin_api.get("/nope"),
        "405": admin_api.request("DELETE", f"/applications/{token}/chats"),
        "413": admin_api.post(f"/applications/{token}/chats", data=b"x" * 70_000),
        "415": admin_api.post(f"/applications/{token}/chats", data=b"x", headers={"Content-Type": "text/csv"}),
        "422": admin_api.post(f"/applications/{token}/chats", json={"name": ""}),
        "metrics": admin_api.get("/metrics"),
        "openapi": admin_api.get("/openapi.json"),
        "docs": admin_api.get("/docs"),
    }
    for what, resp in answers.items():
        for name, value in SECURITY_HEADERS.items():
            assert resp.headers.get(name) == value, (what, name)
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"], what
    security_results.add(check=f"security headers on {', '.join(answers)}", outcome="pass")


@pytest.fixture(scope="module")
def database_down() -> Iterator[tuple[System, str]]:
    """A system whose database rejects it: every read takes the error path that touches SQL."""
    ns = Namespace.create("nodb")
    password = f"pw-{secrets.token_hex(12)}"
    url = f"mysql+pymysql://intruder:{password}@127.0.0.1:3306/{ns.name}?charset=utf8mb4"
    system = System(ns, LOG_ROOT / ns.name, extra_env={"DATABASE_URL": url}).start(wait_ready=False)
    wait_for(lambda: _answers(f"{system.base_url}/healthz"), timeout=30, what="the API")
    yield system, password
    system.stop()
    ns.destroy()


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def test_database_errors_answer_503_without_internals(database_down, security_results):
    system, _ = database_down
    api = Api(system.base_url)
    answers = [
        api.get(f"/applications/{tenancy.new_token()}"),
        api.get(f"/applications/{tenancy.new_token()}/chats"),
        api.post("/applications", json={"name": "x"}),
        api.post(f"/applications/{tenancy.new_token()}/chats", json={"name": "x"}),
    ]
    readiness, status = api.get("/readyz"), api.get("/status")
    security_results.add(check="database unreachable: reads and creates answer 503 {error} with Retry-After, "
                         "the process stays ready, /status names the database", outcome="fail")  # fmt: skip
    for resp in answers:
        assert resp.status_code == 503, resp.text
        assert list(resp.json()) == ["error"], resp.text  # "database unavailable", or numbering not open yet
        assert int(resp.headers["Retry-After"]) >= 1
        for leak in LEAKS:
            assert leak not in resp.text
    # Readiness is about this process (a shared outage must not empty the Service); /status shows the outage.
    assert readiness.status_code == 200
    assert status.status_code == 503 and status.json()["checks"]["database"] == "unavailable"
    security_results.rows[-1]["outcome"] = "pass"


def test_secrets_never_reach_a_log(reliability_namespace, admin_key, database_down, security_results):
    """Runs after the other reliability tests sent the admin key (right and wrong) thousands of times."""
    _, password = database_down
    system, _ = database_down
    logs = [*(LOG_ROOT / reliability_namespace.name).glob("*.log"), *system.log_dir.glob("*.log")]
    assert logs
    for path in logs:
        content = path.read_text(errors="replace")
        assert admin_key not in content, f"admin key in {path}"
        assert password not in content, f"database password in {path}"
    security_results.add(check=f"admin key and database password absent from {len(logs)} process logs",
                         outcome="pass")  # fmt: skip
