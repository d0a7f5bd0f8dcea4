"""The real adapters and the fakes both satisfy the ports, method by method (names, async-ness, signatures)."""

from __future__ import annotations

import importlib
import inspect
import typing

import pytest

from chat_api import ports
from chat_api.adapters.idempotency import IdempotencyStore, StoredKeys
from chat_api.adapters.numbering import Numbering
from chat_api.adapters.publisher import ConfirmingPublisher
from chat_api.adapters.recovery import (
    BrokerQueueCounts,
    NumberingMarker,
    NumberingRecovery,
    RedisRecoveryState,
    RedisSlotOpenings,
)
from chat_api.adapters.repository import SqlRepository
from chat_api.adapters.search import ElasticsearchSearchReader, MySqlSearchReader
from chat_api.adapters.tenants import RedisRateLimiter, TenantDirectory
from chat_api.numbering import Numberer
from chat_api.services import ChatService
from chat_common.tenancy.applications import Applications
from chat_common.tenancy.webhooks import WebhookEndpoints
from tests.unit import fakes

PAIRS = [
    (ports.Repository, SqlRepository, fakes.FakeRepository),
    (ports.NumberingPort, Numbering, fakes.FakeNumbering),
    (ports.NumbersPort, Numberer, Numberer),  # numbering's own: the unit tests run it over the fakes
    (ports.CounterSource, SqlRepository, fakes.FakeRepository),
    (ports.Publisher, ConfirmingPublisher, fakes.FakePublisher),
    (ports.IdempotencyPort, IdempotencyStore, fakes.FakeIdempotency),
    (ports.StoredKeysPort, StoredKeys, fakes.FakeStoredKeys),
    (ports.RecoveryPort, NumberingRecovery, fakes.FakeRecovery),
    (ports.RecoveryState, RedisRecoveryState, fakes.FakeRecoveryState),
    (ports.QueueCounter, BrokerQueueCounts, fakes.FakeQueueCounter),
    (ports.SlotOpenings, RedisSlotOpenings, fakes.FakeSlotOpenings),
    (ports.SlotMarkers, NumberingMarker, fakes.FakeSlotMarkers),
    (ports.Applications, Applications, fakes.FakeApplications),
    (ports.SearchReader, MySqlSearchReader, fakes.FakeSearch),
    (ports.SearchReader, ElasticsearchSearchReader, fakes.FakeSearch),
    (ports.TenantDirectoryPort, TenantDirectory, fakes.FakeTenantDirectory),
    (ports.RateLimiterPort, RedisRateLimiter, fakes.FakeRateLimiter),
    (ports.WebhookEndpointsPort, WebhookEndpoints, fakes.FakeWebhookEndpoints),
]


def members(port: type) -> dict[str, object]:
    """The methods and properties a protocol declares (its own, not ``Protocol``'s machinery)."""
    return {
        name: value
        for name, value in vars(port).items()
        if not name.startswith("_") and (inspect.isfunction(value) or isinstance(value, property))
    }


def shape(function: typing.Callable) -> tuple:
    """What must agree between a port's method and an implementation: async-ness, parameters, types."""
    signature = inspect.signature(function)
    hints = typing.get_type_hints(function)
    parameters = [
        (p.name, p.kind, p.default is inspect.Parameter.empty, hints.get(p.name)) for p in signature.parameters.values()
    ]
    return inspect.iscoroutinefunction(function), parameters, hints.get("return")


@pytest.mark.parametrize(("port", "adapter", "fake"), PAIRS, ids=lambda x: getattr(x, "__name__", x))
def test_adapter_and_fake_match_the_port(port, adapter, fake):
    for implementation in (adapter, fake):
        for name, declared in members(port).items():
            given = inspect.getattr_static(implementation, name, None)
            assert given is not None, f"{implementation.__name__} lacks {name}"
            if isinstance(declared, property):
                assert isinstance(given, property), f"{implementation.__name__}.{name} must be a property"
                continue
            assert shape(given) == shape(declared), f"{implementation.__name__}.{name} differs from {port.__name__}"


def test_search_readers_name_their_backend():
    assert "name" in typing.get_type_hints(ports.SearchReader)
    assert {MySqlSearchReader.name, ElasticsearchSearchReader.name, fakes.FakeSearch.name} == {
        "mysql",
        "elasticsearch",
        "fake",
    }


def test_fakes_are_instances_of_their_ports(world):
    for port, instance in [
        (ports.Repository, world.repository),
        (ports.NumberingPort, world.numbering),
        (ports.Publisher, world.publisher),
        (ports.IdempotencyPort, world.idempotency),
        (ports.StoredKeysPort, world.stored_keys),
        (ports.RecoveryPort, world.recovery),
        (ports.Applications, world.applications),
    ]:
        assert isinstance(instance, port), port.__name__


def test_service_is_typed_against_the_ports_not_the_adapters():
    hints = typing.get_type_hints(ChatService.__init__)
    assert hints["repository"] is ports.Repository
    assert hints["numbers"] is ports.NumbersPort
    assert hints["publisher"] is ports.Publisher
    assert hints["applications"] is ports.Applications
    assert hints["search"] is ports.SearchReader


@pytest.mark.parametrize(
    "module",
    [
        "chat_api.services",
        *(f"chat_api.use_cases.{name}" for name in ("applications", "admin", "chats", "messages")),
        *(f"chat_api.use_cases.{name}" for name in ("search", "streams", "tenants", "publishing", "reads", "paging")),
    ],
)
def test_the_service_layer_imports_no_adapter_class_or_io_library(module):
    source = inspect.getsource(importlib.import_module(module))
    for name in ("SqlRepository", "ConfirmingPublisher", "IdempotencyStore", "NumberingRecovery", "falcon", "pika"):
        assert name not in source, name


def test_no_network_in_unit_tests():
    import socket

    from tests.unit.conftest import NetworkUsed

    with pytest.raises(NetworkUsed):
        socket.create_connection(("127.0.0.1", 6379), timeout=0.1)
    with socket.socket() as sock, pytest.raises(NetworkUsed):
        sock.connect(("127.0.0.1", 3306))
