"""The operator's rules on fakes: the fixtures of tests/operator/conftest.py with the tenancy store replaced by
``FakeApplications`` (tests/unit/fakes.py), so no test here needs MariaDB or Redis. The Kubernetes side stays the
real client against the stand-in API server (tests/operator/fake_apiserver.py)."""

from __future__ import annotations

import pytest

from chat_operator.kube import KubeSecrets
from chat_operator.provisioning import Provisioner
from chat_operator.reconciler import Reconciler
from tests.operator.conftest import API_URL
from tests.unit.fakes import FakeApplications


class OperatorApplications(FakeApplications):
    """The fake tenancy store, with the message count the operator reads (the count sync's, in ``usage_of``)."""

    def messages_count(self, application_id: int) -> int:
        """Messages of an application, as the count sync last reported them."""
        self._enter("messages_count", application_id)
        return self.usage_of.get(application_id, (0, None))[0]


@pytest.fixture
def applications() -> OperatorApplications:
    """A fresh fake store per test (the real one is shared per module: its rows are isolated by name and uid)."""
    return OperatorApplications()


@pytest.fixture
def provisioner(applications: OperatorApplications) -> Provisioner:
    """The provisioner of a deployment that allows adoption (operator.allowAdoption: true)."""
    return Provisioner(applications, allow_adoption=True)


@pytest.fixture
def reconciler(provisioner: Provisioner, secrets: KubeSecrets) -> Reconciler:
    return Reconciler(provisioner, secrets, API_URL)
