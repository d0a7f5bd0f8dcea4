"""What the Elasticsearch backend sends, checked against the documented DSL, without a server."""

from elastic_transport import ApiResponseMeta, HttpHeaders, NodeConfig, ObjectApiResponse

from chat_common.search.base import IndexedMessage
from chat_common.search.elastic import (
    MAPPINGS,
    bulk_operations,
    classify_bulk_response,
    document_id,
    escape_wildcard,
    index_settings,
    search_query,
)


def response(body: dict, status: int = 200) -> ObjectApiResponse:
    meta = ApiResponseMeta(status, "1.1", HttpHeaders(), 0.01, NodeConfig("http", "localhost", 9200))
    return ObjectApiResponse(body=body, meta=meta)


def msg(n: int, version: int = 0) -> IndexedMessage:
    return IndexedMessage(7, 3, n, f"body {n}", version)


def test_mapping_has_a_wildcard_subfield_and_is_strict():
    assert MAPPINGS["dynamic"] == "strict"
    body = MAPPINGS["properties"]["body"]
    assert body["type"] == "text" and body["fields"]["fragments"] == {"type": "wildcard"}
    assert index_settings(2, 0) == {"number_of_shards": 2, "number_of_replicas": 0, "refresh_interval": "1s"}


def test_query_filters_to_one_chat_and_matches_fragments_case_insensitively():
    query = search_query(7, 3, "lo W*")
    filters = query["bool"]["filter"]
    assert {"term": {"application_id": 7}} in filters and {"term": {"chat_number": 3}} in filters
    wildcard = filters[2]["wildcard"]["body.fragments"]
    assert wildcard == {"value": "*lo W\\**", "case_insensitive": True}
    assert query["bool"]["should"][0] == {"match_phrase": {"body": {"query": "lo W*", "boost": 3}}}


def test_escape_wildcard():
    assert escape_wildcard("a*b?c\\") == "a\\*b\\?c\\\\"


def test_bulk_lines_carry_stable_ids_routing_and_external_versions():
    lines = bulk_operations("alias", [msg(1), msg(2, version=1_700_000_000_000_000)])
    assert len(lines) == 4
    action = lines[2]["index"]
    assert action == {
        "_index": "alias",
        "_id": document_id(7, 3, 2),
        "routing": "7",
        "version": 1_700_000_000_000_000,
        "version_type": "external_gte",
    }
    assert lines[3] == {"application_id": 7, "chat_number": 3, "message_number": 2, "body": "body 2"}


def test_bulk_response_without_errors():
    messages = [msg(1), msg(2)]
    outcome = classify_bulk_response(messages, response({"errors": False, "items": [{}, {}]}))
    assert outcome.indexed == messages and not outcome.retry and not outcome.rejected


def test_bulk_item_failures_are_sorted_for_retry():
    messages = [msg(i) for i in range(1, 6)]
    items = [
        {"index": {"status": 201}},
        {"index": {"status": 409, "error": {"type": "version_conflict_engine_exception", "reason": "newer exists"}}},
        {"index": {"status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "queue full"}}},
        {"index": {"status": 503, "error": {"type": "unavailable_shards_exception", "reason": "primary down"}}},
        {"index": {"status": 400, "error": {"type": "mapper_parsing_exception", "reason": "bad field"}}},
    ]
    outcome = classify_bulk_response(messages, response({"errors": True, "items": items}))
    # 409 means a newer version is already indexed: the older write is correctly refused, nothing to retry.
    assert outcome.indexed == messages[:2]
    assert outcome.retry == messages[2:4]
    assert outcome.rejected == [(messages[4], "bad field")]
