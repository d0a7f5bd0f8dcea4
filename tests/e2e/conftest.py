"""Fixtures for black-box HTTP tests (they run against `API_BASE_URL` when set, else a local system)."""

import pytest

from tests.support.http import Api


@pytest.fixture(scope="session")
def api(base_url: str) -> Api:
    """Client of the API under test."""
    return Api(base_url)


@pytest.fixture
def token(api: Api) -> str:
    """A fresh application for one test."""
    return api.new_application("test-app")
