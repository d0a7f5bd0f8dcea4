"""Unit tests reach no service: any attempt to open a network connection fails the test that made it."""

from __future__ import annotations

import socket

import pytest

from chat_api.services import ChatService
from tests.unit.fakes import World, build


class NetworkUsed(AssertionError):
    """A unit test tried to reach the network (MariaDB, Redis, RabbitMQ, anything)."""


def _refuse(*args: object, **kwargs: object) -> None:
    raise NetworkUsed(f"unit tests must not open connections (attempted: {args[1:] or args})")


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connecting a socket or resolving a name raises :class:`NetworkUsed` (local socketpairs still work)."""
    monkeypatch.setattr(socket.socket, "connect", _refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", _refuse)
    monkeypatch.setattr(socket, "getaddrinfo", _refuse)
    monkeypatch.setattr(socket, "create_connection", _refuse)


@pytest.fixture
def built() -> tuple[ChatService, World]:
    """A ChatService over a fresh world of fakes."""
    return build()


@pytest.fixture
def service(built: tuple[ChatService, World]) -> ChatService:
    """The service of :func:`built`."""
    return built[0]


@pytest.fixture
def world(built: tuple[ChatService, World]) -> World:
    """The fakes of :func:`built`."""
    return built[1]
