"""The ingress annotations of the live message streams (SSE): no proxy buffering, a long read timeout, overridable."""

from __future__ import annotations

from tests.chart.conftest import rendered
from tests.chart.rendering import of_kind, render

BUFFERING = "nginx.ingress.kubernetes.io/proxy-buffering"
READ_TIMEOUT = "nginx.ingress.kubernetes.io/proxy-read-timeout"
SEND_TIMEOUT = "nginx.ingress.kubernetes.io/proxy-send-timeout"


def _annotations(values: dict | None = None) -> dict:
    manifests = rendered("kind") if values is None else render(values)
    (ingress,) = of_kind(manifests, "Ingress")
    return ingress.obj["metadata"].get("annotations") or {}


def test_streams_pass_the_ingress_unbuffered_with_a_long_read_timeout():
    annotations = _annotations()
    assert annotations[BUFFERING] == "off"
    assert annotations[READ_TIMEOUT] == annotations[SEND_TIMEOUT] == "3600"


def test_the_timeout_is_a_value_and_the_users_annotations_win():
    values = {"api": {"ingress": {"streaming": {"enabled": True, "readTimeoutSeconds": 600},
                                  "annotations": {BUFFERING: "on", "example.com/x": "y"}}}}  # fmt: skip
    annotations = _annotations(values)
    assert annotations[READ_TIMEOUT] == "600" and annotations[BUFFERING] == "on" and annotations["example.com/x"] == "y"


def test_streaming_annotations_can_be_turned_off():
    annotations = _annotations({"api": {"ingress": {"streaming": {"enabled": False}}}})
    assert BUFFERING not in annotations and READ_TIMEOUT not in annotations
