"""Every item a live stream sends agrees with the event schema of the OpenAPI document the API serves.

A system of its own (API and writers as processes, heartbeats every 0.5 s). One stream sees each kind of item: the
``retry:`` hint, a replayed and a live ``message``, an ``edit``, heartbeat comments, and the last ``error`` (the
tenant is suspended). Each block is parsed as an SSE client does (WHATWG: ``data`` lines joined, ``retry`` an
integer, the last ``id`` kept, ``event`` defaulting to ``message``) and validated with jsonschema against the
``itemSchema`` of ``GET …/messages/stream`` in the served ``/openapi.json`` — ``data`` included: its
``contentMediaType: application/json`` is parsed and checked against its ``contentSchema``. Then the same stream,
read whole, goes through schemathesis's own response check (what outside fuzzing runs: ST108 "SSE event violates
schema").
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator

import pytest
import requests
import schemathesis
from jsonschema import Draft202012Validator, ValidationError, validators

from chat_devtools.http import Api, wait_for
from chat_devtools.processes import System
from chat_devtools.sse import Listener, stream_url
from tests.conftest import own_system

STREAM_PATH = "/applications/{token}/chats/{chat_number}/messages/stream"
RETRY = re.compile(r"^[0-9]+$")


def _content_schema(validator, content_schema, instance, schema):
    """``contentSchema`` asserted, for ``contentMediaType: application/json`` (jsonschema only annotates it)."""
    if schema.get("contentMediaType") != "application/json" or not isinstance(instance, str):
        return
    try:
        parsed = json.loads(instance)
    except ValueError as exc:
        yield ValidationError(f"{instance!r} is not JSON ({exc})")
        return
    yield from validator.descend(parsed, content_schema)


ContentValidator = validators.extend(Draft202012Validator, {"contentSchema": _content_schema})


def item_validator(document: dict) -> Draft202012Validator:
    """A validator of one stream item: the served ``itemSchema``, its ``$ref``s resolved in the same document."""
    item_schema = document["paths"][STREAM_PATH]["get"]["responses"]["200"]["content"]["text/event-stream"]
    root = {**item_schema["itemSchema"], "components": document["components"]}
    return ContentValidator(root)


def parse_items(blocks: list[bytes]) -> tuple[list[dict], list[bytes]]:
    """(items, heartbeats): each block as an SSE client reads it; blocks of comment lines only are heartbeats."""
    items: list[dict] = []
    heartbeats: list[bytes] = []
    last_id: str | None = None
    for block in blocks:
        fields: dict[str, str] = {}
        data: list[str] = []
        lines = block.decode().split("\n")
        if all(line.startswith(":") for line in lines):
            heartbeats.append(block)
            continue
        for line in lines:
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            elif name == "retry":
                if RETRY.match(value):
                    fields["retry"] = value
            elif name in ("event", "id"):
                fields[name] = value
            else:
                fields[name] = value  # an unknown field: kept, so that the schema rejects it
        if "id" in fields:
            last_id = fields["id"]
        item: dict = {k: v for k, v in fields.items() if k not in ("retry", "id")}
        if "retry" in fields:
            item["retry"] = int(fields["retry"])
        if data:
            item["data"] = "\n".join(data)
            item.setdefault("event", "message")
            if last_id is not None:
                item["id"] = last_id
        elif "id" in fields:
            item["id"] = fields["id"]
        items.append(item)
    return items, heartbeats


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    with own_system("stschema", extra_env={"STREAM_HEARTBEAT_SECONDS": "0.5"}) as system:
        yield system


def test_every_item_of_a_stream_matches_the_served_event_schema(system):
    api = Api(system.base_url)
    document = requests.get(f"{system.base_url}/openapi.json", timeout=10).json()
    validator = item_validator(document)
    token, chat = api.new_tenant_with_chat("schema")
    first = api.new_message(token, chat, "replayed\nover two lines")
    api.wait_message(token, chat, first)
    listener = Listener(stream_url(api.base_url, token, chat, after=0)).start()
    # The same stream read whole by requests (it ends with the suspension), for schemathesis's own check below.
    whole: list[requests.Response] = []
    reader = threading.Thread(
        target=lambda: whole.append(requests.get(stream_url(api.base_url, token, chat, after=0), timeout=60)),
        daemon=True,
    )
    reader.start()
    try:
        assert listener.status == 200
        second = api.new_message(token, chat, 'live "quoted" \u2028 body')
        listener.wait_numbers([first, second])
        edited = api.patch(f"/applications/{token}/chats/{chat}/messages/{first}", json={"body": "edited"})
        assert edited.status_code in (200, 202), edited.text
        listener.wait_until(lambda s: any(e.event == "edit" for e in s.events), what="the edit event")
        listener.wait_until(lambda s: s.comments >= 2, what="heartbeats")
        assert api.post(f"/applications/{token}/suspend").status_code == 200
        assert listener.done.wait(20), "the stream of a suspended tenant did not end"
        reader.join(20)
    finally:
        listener.close()

    items, heartbeats = parse_items(listener.blocks)
    kinds = [item.get("event", "retry hint" if "retry" in item else "?") for item in items]
    assert kinds[0] == "retry hint" and kinds[-1] == "error", kinds
    assert {"message", "edit"} <= set(kinds), kinds
    assert heartbeats and all(block == b": heartbeat" for block in heartbeats), heartbeats
    problems = [(item, error.message) for item in items for error in validator.iter_errors(item)]
    assert problems == [], problems
    # The check can fail: a message without its id, an edit without its version, a retry hint that is not a number.
    for wrong in (
        {"event": "message", "data": json.dumps({"message_number": 1, "body": "x"})},
        {"event": "edit", "id": "1", "data": json.dumps({"message_number": 1, "body": "x"})},
        {"event": "error", "data": "not json"},
        {"retry": "soon"},
    ):
        assert not validator.is_valid(wrong), wrong

    # What outside fuzzing runs (schemathesis's response check, ST108 "SSE event violates schema"), on the whole
    # stream as the server sent it, against the served document.
    (response,) = whole
    assert response.status_code == 200 and b"event: error" in response.content
    operation = schemathesis.openapi.from_dict(document).find_operation_by_path("get", STREAM_PATH)
    operation.validate_response(response)  # raises with every violation


def test_the_served_document_is_the_one_the_stream_test_reads(system):
    served = wait_for(lambda: requests.get(f"{system.base_url}/openapi.json", timeout=10).json(), 10)
    assert served["openapi"].startswith("3.2")  # itemSchema: each event of a text/event-stream
    media = served["paths"][STREAM_PATH]["get"]["responses"]["200"]["content"]["text/event-stream"]
    assert set(media) == {"itemSchema", "example"}
    items, _ = parse_items(media["example"].encode().split(b"\n\n")[:-1])
    validator = item_validator(served)
    assert all(validator.is_valid(item) for item in items), items  # the documented example agrees too
