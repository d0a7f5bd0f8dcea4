"""The OpenAPI document is valid, describes exactly the routes the app has, and is what the API serves."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import falcon.inspect
import pytest
import requests
from openapi_spec_validator import validate

from chat_api.app import build_service, create_app
from chat_common.config import Settings
from chat_common.validation import (
    BODY_MAX_CHARS,
    MAX_NUMBER,
    NAME_MAX_CHARS,
    QUERY_MAX_CHARS,
    Invalid,
    clean_body,
    clean_name,
)

DOCUMENT = Path(__file__).resolve().parents[2] / "services/api/chat_api/openapi.json"
METHODS = {"get", "post", "put", "patch", "delete"}
CONVERTER = re.compile(r"\{(\w+):(?:int|number)\(min=(\d+), max=(\d+)\)\}")


@pytest.fixture(scope="module")
def document() -> dict:
    return json.loads(DOCUMENT.read_text())


@pytest.fixture(scope="module")
def app_routes() -> dict[str, tuple[set[str], dict[str, tuple[int, int]]]]:
    """Path template -> (methods with a responder, {parameter: (min, max)} of its int converters)."""
    settings = Settings()
    service, readiness, _, _ = build_service(settings)  # builds clients but opens no connection
    routes = {}
    for route in falcon.inspect.inspect_routes(create_app(service, settings, readiness)):
        bounds = {name: (int(low), int(high)) for name, low, high in CONVERTER.findall(route.path)}
        path = CONVERTER.sub(r"{\1}", route.path)
        routes[path] = ({m.method.lower() for m in route.methods if not m.internal}, bounds)
    return routes


def _resolve(document: dict, node: dict) -> dict:
    while "$ref" in node:
        target = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def test_document_is_valid_openapi(document):
    validate(document)  # raises with the first violation


def test_document_and_routes_match_exactly(document, app_routes):
    documented = {(path, m) for path, item in document["paths"].items() for m in item if m in METHODS}
    routed = {(path, m) for path, (methods, _) in app_routes.items() for m in methods}
    assert routed - documented == set(), "routes missing from openapi.json"
    assert documented - routed == set(), "documented operations the app does not have"


def test_path_number_bounds_match_the_route_converters(document, app_routes):
    for path, (_, bounds) in app_routes.items():
        item = document["paths"][path]
        parameters = {p["name"]: p for p in (_resolve(document, p) for p in item.get("parameters", []))}
        for name, (low, high) in bounds.items():
            schema = parameters[name]["schema"]
            assert (schema["minimum"], schema["maximum"]) == (low, high), (path, name)


def test_field_limits_are_the_ones_the_code_enforces(document):
    """The document states the limits of ``chat_common.validation``, the one home of those numbers."""
    schemas = document["components"]["schemas"]
    assert schemas["Name"]["maxLength"] == NAME_MAX_CHARS
    assert schemas["Body"]["maxLength"] == BODY_MAX_CHARS
    assert f"1-{NAME_MAX_CHARS} characters" in schemas["Name"]["description"]
    assert f"1-{BODY_MAX_CHARS} characters" in schemas["Body"]["description"]
    queries = [
        _resolve(document, p)
        for item in document["paths"].values()
        for operation in [item.get("get")]
        if operation
        for p in operation.get("parameters", [])
    ]
    lengths = {p["schema"].get("maxLength") for p in queries if p.get("name") == "query"}
    assert lengths == {QUERY_MAX_CHARS}
    numbers = [
        p["schema"]["maximum"]
        for item in document["paths"].values()
        for p in (_resolve(document, x) for x in item.get("parameters", []))
        if p["name"] in ("chat_number", "message_number")
    ]
    assert numbers and set(numbers) == {MAX_NUMBER}


def test_every_error_is_the_error_shape_and_bodies_take_json_and_forms(document):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            for status, response in operation["responses"].items():
                if path in ("/readyz", "/status"):  # their 503 is the report itself
                    continue
                response = _resolve(document, response)
                if int(status) >= 400:
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (method, path, status)
                if status in ("429", "503"):
                    assert "Retry-After" in response["headers"], (method, path, status)
            if "requestBody" in operation:
                content = operation["requestBody"]["content"]
                assert set(content) == {"application/json", "application/x-www-form-urlencoded"}, (method, path)
                assert {"400", "411", "413", "415", "422"} <= set(operation["responses"]), (method, path)
            if "{token}" in path and operation.get("security"):  # admin: not a tenant request, never limited
                assert "404" in operation["responses"] and "429" not in operation["responses"], (method, path)
            elif "{token}" in path:  # the tenant rules: unknown or expired token, suspended, over its rate
                assert {"403", "404", "429"} <= set(operation["responses"]), (method, path)


def test_admin_operations_declare_the_admin_key(document):
    secured = {
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS and {"adminKey": []} in (operation.get("security") or [])
    }
    tenants = {
        "POST /applications/{token}/suspend",
        "POST /applications/{token}/resume",
        "POST /applications/{token}/rotate-token",
        "GET /applications/{token}/limits",
        "PUT /applications/{token}/limits",
        "PATCH /applications/{token}/limits",
        "GET /applications/{token}/cors-origins",
        "PUT /applications/{token}/cors-origins",
        "GET /applications/{token}/usage",
        "GET /applications/{token}/webhooks",
        "POST /applications/{token}/webhooks",
        "GET /applications/{token}/webhooks/{webhook_id}",
        "PATCH /applications/{token}/webhooks/{webhook_id}",
        "DELETE /applications/{token}/webhooks/{webhook_id}",
        "POST /applications/{token}/webhooks/{webhook_id}/rotate-secret",
        "POST /applications/{token}/webhooks/{webhook_id}/replay",
    }
    assert secured == {"GET /applications", "POST /applications", "DELETE /applications/{token}", *tenants}


def test_every_tenant_route_has_a_header_form(document):
    """Each tenant operation of the path form (``/applications/{token}...``, not admin) is also declared without the
    token in the path (``/application...``), with the applicationToken scheme and its 401; DELETE is admin only."""
    admin = ("/suspend", "/resume", "/rotate-token", "/limits", "/cors-origins", "/usage")
    for path, item in document["paths"].items():
        if not path.startswith("/applications/{token}") or path.endswith(admin) or "/webhooks" in path:
            continue
        header = document["paths"]["/application" + path.removeprefix("/applications/{token}")]
        assert {"$ref": "#/components/parameters/token"} not in header.get("parameters", [])
        for method in METHODS & set(item) - {"delete"}:
            operation = header[method]
            assert operation["security"] == [{"applicationToken": []}], (method, path)
            assert "401" in operation["responses"], (method, path)
        assert "delete" not in header
    assert document["components"]["securitySchemes"]["applicationToken"] == {
        **document["components"]["securitySchemes"]["applicationToken"],
        "type": "http",
        "scheme": "bearer",
    }


def test_response_objects_never_carry_undocumented_fields(document):
    """``additionalProperties: false`` on every response object: an internal id leaking out fails the fuzzer."""
    for name in ("Application", "Chat", "Message", "SearchHit", "ChatNumber", "MessageNumber", "Error",
                 "TenantAdmin", "TokenRotation", "TenantLimits", "Usage"):  # fmt: skip
        schema = document["components"]["schemas"][name]
        assert schema["additionalProperties"] is False, name
        assert "id" not in schema["properties"], name


def test_the_webhook_payload_is_the_event_logs_event(document):
    """A delivery's body carries an event exactly as ``GET …/events`` returns one, and the Standard Webhooks
    headers."""
    schemas = document["components"]["schemas"]
    payload = schemas["WebhookPayload"]
    assert payload["properties"]["data"]["$ref"] == "#/components/schemas/LogEvent"
    assert set(payload["required"]) == {"type", "timestamp", "data"}
    page = schemas["EventPage"]["properties"]["events"]["items"]
    assert page == {"$ref": "#/components/schemas/LogEvent"}
    delivery = document["webhooks"]["event"]["post"]
    assert [p["name"] for p in delivery["parameters"]] == ["webhook-id", "webhook-timestamp", "webhook-signature"]
    assert delivery["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/WebhookPayload")
    endpoint = schemas["WebhookEndpoint"]
    assert "secret" not in endpoint["properties"] and "secret" in schemas["WebhookEndpointWithSecret"]["required"]


def test_served_document_is_the_file(reliability_system):
    resp = requests.get(f"{reliability_system.base_url}/openapi.json", timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.content == DOCUMENT.read_bytes()


def test_docs_page_lists_every_operation_without_scripts(reliability_system, document):
    resp = requests.get(f"{reliability_system.base_url}/docs", timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/html")
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src" not in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "<script" not in resp.text
    for path, item in document["paths"].items():
        for method in item:
            if method in METHODS:
                assert f"<span class=method>{method}</span> <span class=path>{path}</span>" in resp.text


def test_text_patterns_agree_with_the_validation_code(document):
    """The document's patterns (ECMA-262 regexes) accept exactly what chat_common.validation accepts.

    Python's idea of whitespace (str.strip) differs from ECMA's \\s, so the patterns spell the set out;
    this keeps the two in step over random short strings of every kind of character.
    """

    def ecma(pattern: str) -> re.Pattern:  # ECMA's $ is the end of the input; Python's also allows a final "\n"
        return re.compile(pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern)

    def accepts(clean, value: str) -> bool:
        try:
            clean(value)
        except Invalid:
            return False
        return True

    schemas = document["components"]["schemas"]
    name, body = ecma(schemas["Name"]["pattern"]), ecma(schemas["Body"]["pattern"])
    query = ecma(document["components"]["parameters"]["query"]["schema"]["pattern"])
    rng = random.Random(6)
    alphabet = [chr(c) for c in range(0x3100)] + ["\ufeff", "\U0001f600", "\U000e0001"]
    for _ in range(50_000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 3)))
        assert bool(name.search(value)) == accepts(clean_name, value), repr(value)
        assert bool(body.search(value)) == accepts(clean_body, value), repr(value)
        assert bool(query.search(value)) == bool(value.strip()), repr(value)
