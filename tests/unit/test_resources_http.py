"""The Falcon app over a service on fakes: statuses, headers, body forms, paging links and the served contract."""

from __future__ import annotations

import json
from urllib.parse import urlencode, urlsplit

import pytest
from falcon import testing

from chat_api.adapters.idempotency import PENDING
from chat_api.app import create_app
from chat_api.resources.openapi import DOCUMENT_PATH, OPEN_ADMIN_NOTE
from chat_common.config import Settings
from tests.unit.fakes import build

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
ADMIN_OPERATIONS = [
    ("/applications", "get"),
    ("/applications", "post"),
    ("/applications/{token}", "delete"),
    *[(f"/applications/{{token}}/{action}", "post") for action in ("suspend", "resume", "rotate-token")],
    *[("/applications/{token}/limits", method) for method in ("get", "put", "patch")],
    *[("/applications/{token}/cors-origins", method) for method in ("get", "put")],
    ("/applications/{token}/usage", "get"),
    *[("/applications/{token}/webhooks", method) for method in ("get", "post")],
    *[("/applications/{token}/webhooks/{webhook_id}", method) for method in ("get", "patch", "delete")],
    *[(f"/applications/{{token}}/webhooks/{{webhook_id}}/{action}", "post") for action in ("rotate-secret", "replay")],
]


async def _ok() -> str:
    return "ok"


async def _down() -> str:
    raise ConnectionError("down")


def make_client(settings: Settings | None = None, checks: dict | None = None):
    """A TestClient over a fresh service of fakes, and the fakes."""
    service, world = build()
    app = create_app(service, settings or Settings(), checks or {"database": _ok}, lifecycle=None)
    return testing.TestClient(app), world


@pytest.fixture
def client():
    return make_client()


@pytest.fixture
def app_token(client):
    _, world = client
    return world.application().token


def post_form(http, path: str, fields: dict, **kwargs):
    return http.simulate_post(path, body=urlencode(fields), headers={**FORM, **kwargs.pop("headers", {})}, **kwargs)


def links(resp) -> dict[str, str]:
    """``rel -> path?query`` of the Link header (the links are absolute: the test host is left out)."""
    out = {}
    for part in resp.headers.get("Link", "").split(","):
        if part.strip():
            url, rel = part.split(";", 1)
            parts = urlsplit(url.strip(" <>"))
            out[rel.split("=", 1)[1].strip('" ')] = f"{parts.path}?{parts.query}"
    return out


# -- creates ----------------------------------------------------------------------------------------------------
def test_create_application_201_then_200_with_the_same_key(client):
    http, _ = client
    first = http.simulate_post("/applications", json={"name": "Acme"}, headers={"Idempotency-Key": "a1"})
    again = http.simulate_post("/applications", json={"name": "Acme"}, headers={"Idempotency-Key": "a1"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json == again.json and set(first.json) == {"token", "name", "chats_count"}
    assert first.headers["Location"].endswith(f"/applications/{first.json['token']}")


def test_create_application_with_a_reused_key_and_another_name_is_409(client):
    http, _ = client
    first = http.simulate_post("/applications", json={"name": "Acme"}, headers={"Idempotency-Key": "a2"})
    other = http.simulate_post("/applications", json={"name": "Globex"}, headers={"Idempotency-Key": "a2"})
    assert (other.status_code, other.json) == (409, {"error": "this Idempotency-Key was used for a different request"})
    # The same request in another form (nested JSON, a form body) has the same fingerprint: it replays.
    nested = http.simulate_post(
        "/applications", json={"application": {"name": "Acme"}}, headers={"Idempotency-Key": "a2"}
    )
    form = post_form(http, "/applications", {"name": "Acme"}, headers={"Idempotency-Key": "a2"})
    assert (nested.status_code, form.status_code) == (200, 200)
    assert nested.json["token"] == form.json["token"] == first.json["token"]


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("json", {"name": "r"}),
        ("json", {"chat": {"name": "r"}}),
        ("json", {"chat[name]": "r"}),
        ("form", {"chat[name]": "r"}),
        ("form", {"name": "r"}),
    ],
)
def test_create_chat_in_every_single_form(client, app_token, kind, body):
    http, world = client
    path = f"/applications/{app_token}/chats"
    resp = http.simulate_post(path, json=body) if kind == "json" else post_form(http, path, body)
    assert resp.status_code == 201 and resp.json == {"chat_number": 1}
    assert resp.headers["Location"].endswith(f"{path}/1")
    assert world.payloads("chats")[0]["name"] == "r"


def test_create_message_201_and_replay_header(client, app_token):
    http, _ = client
    http.simulate_post(f"/applications/{app_token}/chats", json={"name": "c"})
    path = f"/applications/{app_token}/chats/1/messages"
    first = post_form(http, path, {"message[body]": "hi"}, headers={"Idempotency-Key": "m1"})
    again = post_form(http, path, {"message[body]": "hi"}, headers={"Idempotency-Key": "m1"})
    assert (first.status_code, again.status_code) == (201, 201)
    assert first.json == again.json == {"message_number": 1}
    assert "Idempotent-Replayed" not in first.headers and again.headers["Idempotent-Replayed"] == "true"


def test_key_reused_for_other_text_409_without_retry_after(client, app_token):
    http, _ = client
    path = f"/applications/{app_token}/chats"
    http.simulate_post(path, json={"name": "a"}, headers={"Idempotency-Key": "k"})
    resp = http.simulate_post(path, json={"name": "b"}, headers={"Idempotency-Key": "k"})
    assert resp.status_code == 409 and "Retry-After" not in resp.headers
    assert "different request" in resp.json["error"]


def test_key_in_progress_409_with_retry_after(client, app_token):
    http, world = client
    world.idempotency.values[(world.applications.find(app_token).id, "chats", "k")] = PENDING
    resp = http.simulate_post(f"/applications/{app_token}/chats", json={"name": "a"}, headers={"Idempotency-Key": "k"})
    assert resp.status_code == 409 and resp.headers["Retry-After"] == str(world.idempotency.claim_seconds)


@pytest.mark.parametrize("body", [{"name": "  "}, {"name": 5}, {}, {"name": "x" * 256}, {"name": "a\x01"}])
def test_invalid_field_422(client, app_token, body):
    http, world = client
    resp = http.simulate_post(f"/applications/{app_token}/chats", json=body)
    assert resp.status_code == 422 and "name" in resp.json["error"]
    assert world.publisher.published == []


def test_malformed_idempotency_key_422(client, app_token):
    http, _ = client
    resp = http.simulate_post(
        f"/applications/{app_token}/chats", json={"name": "a"}, headers={"Idempotency-Key": "a b"}
    )
    assert resp.status_code == 422 and "Idempotency-Key" in resp.json["error"]


@pytest.mark.parametrize(
    ("body", "content_type"),
    [("{not json", "application/json"), ("[1, 2]", "application/json"), ("name=%ff", FORM["Content-Type"])],
)
def test_malformed_or_non_object_body_400(client, app_token, body, content_type):
    http, _ = client
    resp = http.simulate_post(f"/applications/{app_token}/chats", body=body, headers={"Content-Type": content_type})
    assert resp.status_code == 400 and "error" in resp.json


# -- ambiguous bodies: one form only ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("form", {"name": "x" * 262, "chat[name]": "ok"}),  # the reported case: accepted with 201 before
        ("form", {"name": "ok", "chat[name]": "ok"}),
        ("json", {"name": "a", "chat": {"name": "b"}}),
        ("json", {"chat[name]": "a", "name": "b"}),
        ("json", {"chat[name]": "a", "chat": {"name": "b"}}),
        ("json", {"name": None, "chat[name]": "b"}),
    ],
)
def test_a_body_with_more_than_one_form_is_422(client, app_token, kind, body):
    http, world = client
    path = f"/applications/{app_token}/chats"
    resp = http.simulate_post(path, json=body) if kind == "json" else post_form(http, path, body)
    assert resp.status_code == 422
    assert "more than one form" in resp.json["error"]
    assert world.publisher.published == [] and world.numbering.calls == []


def test_ambiguous_message_edit_and_application_rename_are_422(client, app_token):
    http, _ = client
    http.simulate_post(f"/applications/{app_token}/chats", json={"name": "c"})
    edit = post_form(http, f"/applications/{app_token}/chats/1/messages", {"body": "a", "message[body]": "b"})
    rename = http.simulate_patch(f"/applications/{app_token}", json={"name": "a", "application": {"name": "b"}})
    assert (edit.status_code, rename.status_code) == (422, 422)


def test_an_unrelated_member_named_like_the_root_is_not_a_second_form(client, app_token):
    http, _ = client
    resp = http.simulate_post(f"/applications/{app_token}/chats", json={"name": "a", "chat": "not an object"})
    assert resp.status_code == 201


# -- not found, unavailable -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path",
    [
        "/applications/unknown",
        "/applications/unknown/chats/1",
        "/applications/bad$token",
        "/applications/{t}/chats/0",
        "/applications/{t}/chats/4294967296",
        "/applications/{t}/chats/7/messages/1",
    ],
)
def test_404(client, app_token, path):
    http, _ = client
    resp = http.simulate_get(path.replace("{t}", app_token))
    assert resp.status_code == 404 and "error" in resp.json


def test_create_in_unknown_chat_404(client, app_token):
    http, _ = client
    resp = http.simulate_post(f"/applications/{app_token}/chats/3/messages", json={"body": "x"})
    assert resp.status_code == 404 and resp.json == {"error": "chat not found"}


def test_broker_down_503_with_retry_after(client, app_token):
    http, world = client
    world.publisher.fail_next()
    resp = http.simulate_post(f"/applications/{app_token}/chats", json={"name": "a"})
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "1"


def test_numbering_recovering_503_with_retry_after(client, app_token):
    http, world = client
    world.recovery.opens_after = None
    world.numbering.lose_data()
    resp = http.simulate_post(f"/applications/{app_token}/chats", json={"name": "a"})
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "1" and "recovering" in resp.json["error"]


def test_search_down_503_with_retry_after_5(client, app_token):
    http, world = client
    http.simulate_post(f"/applications/{app_token}/chats", json={"name": "a"})
    world.deliver()
    world.search.unavailable = True
    resp = http.simulate_get(f"/applications/{app_token}/chats/1/messages/search", params={"query": "x"})
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "5"


# -- edits: 200 as stored, 202 queued ---------------------------------------------------------------------------
def test_rename_200_when_written_and_202_when_queued(client, app_token):
    http, world = client
    http.simulate_post(f"/applications/{app_token}/chats", json={"name": "a"})
    queued = http.simulate_patch(f"/applications/{app_token}/chats/1", json={"name": "b"})
    world.deliver()
    applied = http.simulate_put(f"/applications/{app_token}/chats/1", body="chat%5Bname%5D=c", headers=FORM)
    assert (queued.status_code, applied.status_code) == (202, 200)
    assert queued.json["name"] == "b" and applied.json == {"chat_number": 1, "name": "c", "messages_count": 0}
    assert http.simulate_get(f"/applications/{app_token}/chats/1").json["name"] == "c"


def test_message_edit_200(client, app_token):
    http, world = client
    http.simulate_post(f"/applications/{app_token}/chats", json={"name": "a"})
    http.simulate_post(f"/applications/{app_token}/chats/1/messages", json={"message": {"body": "x"}})
    world.deliver()
    resp = http.simulate_patch(f"/applications/{app_token}/chats/1/messages/1", json={"body": "y"})
    assert resp.status_code == 200 and resp.json == {"message_number": 1, "body": "y"}


# -- lists: paging, links, 400 ----------------------------------------------------------------------------------
def test_list_links_next_uses_after_and_prev_counts_back(client, app_token):
    http, world = client
    http.simulate_post(f"/applications/{app_token}/chats", json={"name": "a"})
    for i in range(5):
        http.simulate_post(f"/applications/{app_token}/chats/1/messages", json={"body": f"m{i}"})
    world.deliver()
    base = f"/applications/{app_token}/chats/1/messages"
    first = http.simulate_get(base, params={"per_page": "2"})
    assert [m["message_number"] for m in first.json] == [1, 2]
    assert links(first) == {"first": f"{base}?page=1&per_page=2", "next": f"{base}?after=2&page=2&per_page=2"}
    second = http.simulate_get(base, query_string="after=2&page=2&per_page=2")
    assert [m["message_number"] for m in second.json] == [3, 4]
    assert links(second)["prev"] == f"{base}?page=1&per_page=2"
    last = http.simulate_get(base, query_string="after=4&page=3&per_page=2")
    assert [m["message_number"] for m in last.json] == [5] and "next" not in links(last)


def test_search_links_keep_the_query(client, app_token):
    http, world = client
    http.simulate_post(f"/applications/{app_token}/chats", json={"name": "a"})
    for _ in range(3):
        http.simulate_post(f"/applications/{app_token}/chats/1/messages", json={"body": "Hello"})
    world.deliver()
    resp = http.simulate_get(f"/applications/{app_token}/chats/1/messages/search", query_string="query=ell&per_page=2")
    assert resp.status_code == 200 and [h["message_number"] for h in resp.json] == [1, 2]
    assert links(resp)["next"].endswith("page=2&per_page=2&query=ell")


@pytest.mark.parametrize(
    "query", ["per_page=0", "per_page=101", "page=0", "page=100001", "page=abc", "per_page=2.5", "after=-1", "after=x"]
)
def test_bad_pagination_400(client, app_token, query):
    http, world = client
    http.simulate_post(f"/applications/{app_token}/chats", json={"name": "a"})
    world.deliver()
    resp = http.simulate_get(f"/applications/{app_token}/chats", query_string=query)
    assert resp.status_code == 400 and "error" in resp.json


@pytest.mark.parametrize("name", ["page", "per_page", "after"])
@pytest.mark.parametrize("spelling", ["+1", "01", "1_0", " 1", "1 ", "\uff11", "\u0661", "1e1", "0x1"])
def test_query_numbers_are_strict_ascii(client, app_token, name, spelling):
    """int() reads all of these; the contract's numbers are ASCII digits without sign or leading zeros (#23)."""
    http, world = client
    http.simulate_post(f"/applications/{app_token}/chats", json={"name": "a"})
    world.deliver()
    for path in (f"/applications/{app_token}/chats", f"/applications/{app_token}/chats/1/messages"):
        resp = http.simulate_get(path, query_string=urlencode({name: spelling}))
        assert resp.status_code == 400, (path, spelling, resp.text)
        assert f'"{name}"' in resp.json["error"] and "ASCII digits" in resp.json["error"], resp.json


def test_offset_pages_stop_at_the_cap_and_keyset_goes_beyond(client, app_token):
    """``(page - 1) x per_page`` up to MAX_OFFSET (10,000) rows; deeper by ``after=`` only (#23)."""
    http, world = client
    http.simulate_post(f"/applications/{app_token}/chats", json={"name": "a"})
    world.deliver()
    chats = f"/applications/{app_token}/chats"
    for path in (chats, f"{chats}/1/messages"):
        assert http.simulate_get(path, query_string="page=101&per_page=100").status_code == 200  # 10,000 rows in
        deep = http.simulate_get(path, query_string="page=102&per_page=100")
        assert deep.status_code == 400 and "after=" in json.dumps(deep.json), deep.text
        assert http.simulate_get(path, query_string="page=501").status_code == 200  # default 20 per page
        assert http.simulate_get(path, query_string="page=502").status_code == 400
        # With after=, page is only the page's ordinal (the next link carries it): not capped.
        assert http.simulate_get(path, query_string="after=0&page=1000000&per_page=100").status_code == 200
    search = http.simulate_get(f"{chats}/1/messages/search", query_string="query=a&page=102&per_page=100")
    assert search.status_code == 400
    assert http.simulate_get("/applications", query_string="page=102&per_page=100").status_code == 400


def test_page_size_limit_follows_the_settings(app_token):
    http, _ = make_client(Settings(max_page_size=100))
    assert http.simulate_get("/applications", query_string="per_page=100").status_code == 200


@pytest.mark.parametrize("query", ["", "query=", "query=%20%20", "query=" + "x" * 201])
def test_bad_search_query_400(client, app_token, query):
    http, world = client
    http.simulate_post(f"/applications/{app_token}/chats", json={"name": "a"})
    world.deliver()
    resp = http.simulate_get(f"/applications/{app_token}/chats/1/messages/search", query_string=query)
    assert resp.status_code == 400


# -- admin key and the served contract --------------------------------------------------------------------------
def test_admin_operations_need_the_key_when_one_is_set():
    http, _ = make_client(Settings(admin_api_key="s3cret"))
    assert http.simulate_get("/applications").status_code == 401
    assert (
        http.simulate_post("/applications", json={"name": "a"}, headers={"Authorization": "Bearer nope"}).status_code
        == 401
    )
    created = http.simulate_post("/applications", json={"name": "a"}, headers={"Authorization": "Bearer s3cret"})
    assert created.status_code == 201
    token = created.json["token"]
    assert http.simulate_get(f"/applications/{token}").status_code == 200  # the token authorises its own reads
    assert http.simulate_delete(f"/applications/{token}", headers={"Authorization": "Bearer s3cret"}).status_code == 204


def test_without_a_key_admin_operations_are_open(client):
    http, _ = client
    token = http.simulate_post("/applications", json={"name": "a"}).json["token"]
    assert http.simulate_get("/applications").json[0]["token"] == token
    assert http.simulate_delete(f"/applications/{token}").status_code == 204
    assert http.simulate_delete(f"/applications/{token}").status_code == 404


def test_served_document_without_a_key_declares_no_admin_security(client):
    http, _ = client
    document = http.simulate_get("/openapi.json").json
    for path, method in ADMIN_OPERATIONS:
        operation = document["paths"][path][method]
        assert operation["security"] == [] and "401" not in operation["responses"]
        assert OPEN_ADMIN_NOTE in operation["description"]
    assert not any(
        {"adminKey": []} in (op.get("security") or [])
        for item in document["paths"].values()
        for op in item.values()
        if isinstance(op, dict)
    )
    header_form = document["paths"]["/application/chats"]["get"]  # the tenant's token in a header stays declared
    assert header_form["security"] == [{"applicationToken": []}] and "401" in header_form["responses"]
    assert "(admin key)" not in http.simulate_get("/docs").text


def test_served_document_with_a_key_is_the_file():
    http, _ = make_client(Settings(admin_api_key="s3cret"))
    resp = http.simulate_get("/openapi.json")
    assert resp.content == DOCUMENT_PATH.read_bytes()
    document = json.loads(resp.content)
    assert all(document["paths"][p][m]["security"] == [{"adminKey": []}] for p, m in ADMIN_OPERATIONS)
    assert http.simulate_get("/docs").text.count("(admin key)") == len(ADMIN_OPERATIONS)


def test_document_forms_are_exclusive(client):
    """Each body schema's alternatives forbid the other forms' members, so ``oneOf`` means exactly one."""
    document = json.loads(DOCUMENT_PATH.read_bytes())
    for name in ("ChatNameJson", "ChatNameForm", "MessageBodyJson", "ApplicationNameForm"):
        alternatives = document["components"]["schemas"][name]["oneOf"]
        members = {m for alt in alternatives for m in alt["required"]}
        for alt in alternatives:
            for other in members - set(alt["required"]):
                assert other in alt["properties"], (name, alt["title"], other)


# -- probes -----------------------------------------------------------------------------------------------------
def test_status_reports_each_dependency():
    http, _ = make_client(checks={"database": _ok, "redis": _down})
    resp = http.simulate_get("/status")
    assert resp.status_code == 503 and resp.json["checks"] == {"database": "ok", "redis": "unavailable"}
    assert http.simulate_get("/readyz").status_code == 200 and http.simulate_get("/healthz").status_code == 200


def test_status_shows_the_queues_late_retries_are_a_fault_parked_dead_letters_are_not():
    def tiers(state: str):
        async def check():
            return state, {"overdue_seconds": 42.0, "tiers": {"q.delay.1s": {"messages": 3, "drainers": 0}}}

        return check

    async def dead_letters():
        return "holding", {"queues": {"q.dead": 2}}

    http, _ = make_client(checks={"database": _ok, "retry_tiers": tiers("ok"), "dead_letters": dead_letters})
    resp = http.simulate_get("/status")
    assert resp.status_code == 200 and resp.json["checks"]["dead_letters"] == "holding"  # for a human, not a fault
    assert resp.json["details"]["dead_letters"] == {"queues": {"q.dead": 2}}
    for late in ("overdue", "undrained"):
        http, _ = make_client(checks={"database": _ok, "retry_tiers": tiers(late)})
        resp = http.simulate_get("/status")
        assert resp.status_code == 503 and resp.json["status"] == "degraded"
        assert resp.json["details"]["retry_tiers"]["tiers"]["q.delay.1s"] == {"messages": 3, "drainers": 0}


# -- strict path numbers and the stream's resume point ---------------------------------------------------------------
@pytest.mark.parametrize("spelling", ["+1", "01", "1_0", "1.0", "0", "\uff11", "\u0661", "\u06f1", "4294967296", "-1"])
def test_a_path_number_is_strict_ascii_digits(client, app_token, spelling):
    http, world = client
    http.simulate_post(f"/applications/{app_token}/chats", json={"name": "room"})
    http.simulate_post(f"/applications/{app_token}/chats/1/messages", json={"body": "hi"})
    world.deliver()
    assert http.simulate_get(f"/applications/{app_token}/chats/1").status_code == 200
    assert http.simulate_get(f"/applications/{app_token}/chats/1/messages/1").status_code == 200
    for path in (f"chats/{spelling}", f"chats/1/messages/{spelling}", f"chats/{spelling}/messages"):
        resp = http.simulate_get(f"/applications/{app_token}/{path}")
        assert resp.status_code == 404 and resp.json["error"], path


@pytest.mark.parametrize(("header", "after"), [("0", 0), ("7", 7), ("0000000007", 7), ("9999999999", 4294967295)])
def test_every_last_event_id_the_contract_allows_is_a_resume_point(header, after):
    from falcon import testing

    from chat_api.resources.streams import last_event_id

    assert last_event_id(testing.create_asgi_req(headers={"Last-Event-ID": header})) == after


@pytest.mark.parametrize("header", ["x1", "12345678901", "+1", "1_0", " 1 2"])
def test_a_last_event_id_outside_the_contract_is_400(header):
    import falcon
    from falcon import testing

    from chat_api.resources.streams import last_event_id

    with pytest.raises(falcon.HTTPBadRequest):
        last_event_id(testing.create_asgi_req(headers={"Last-Event-ID": header}))


# -- 503 bodies: what to do, never which host failed (issue 23) --------------------------------------------------
def test_broker_failure_text_stays_out_of_the_503_body(client, app_token):
    http, world = client
    world.publisher.fail_next(reason="message broker unavailable: AMQPConnectionError('rabbit-2.internal:5672')")
    resp = http.simulate_post(f"/applications/{app_token}/chats", json={"name": "a"})
    assert resp.status_code == 503
    assert resp.json == {"error": "message broker unavailable; try again in 1 s"}


def test_search_failure_text_stays_out_of_the_503_body(client, app_token):
    from chat_common.search import SearchUnavailable

    http, world = client
    http.simulate_post(f"/applications/{app_token}/chats", json={"name": "a"})
    world.deliver()
    world.search.fail("search", SearchUnavailable("ConnectionError(es-0.internal:9200) on index chat-messages-v3"))
    resp = http.simulate_get(f"/applications/{app_token}/chats/1/messages/search", params={"query": "x"})
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "5"
    assert resp.json == {"error": "search unavailable; try again in 5 s"}


def test_every_503_body_says_when_to_try_again(client, app_token):
    http, world = client
    world.recovery.opens_after = None
    world.numbering.lose_data()
    resp = http.simulate_post(f"/applications/{app_token}/chats", json={"name": "a"})
    assert resp.status_code == 503 and resp.json["error"].endswith("; try again in 1 s")
