"""The operator's adoption rules (``spec.existingToken``), on the fake tenancy layer: only where the deployment
allows it, only with the current token, only of a tenant no other resource manages, and a resource deleted with
``Retain`` lets its tenant go."""

from __future__ import annotations

import uuid

import pytest

from chat_operator.provisioning import Policy, Provisioner, Rejected, Spec
from tests.unit.fakes import FakeApplications


def uid() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def applications() -> FakeApplications:
    return FakeApplications()


@pytest.fixture
def provisioner(applications: FakeApplications) -> Provisioner:
    return Provisioner(applications, allow_adoption=True)


def refusal(provisioner: Provisioner, owner: str, spec: Spec) -> str:
    with pytest.raises(Rejected) as caught:
        provisioner.provision(owner, spec)
    assert caught.value.reason == "AdoptionRefused"
    return caught.value.message


def test_adoption_is_off_unless_the_deployment_allows_it(applications):
    tenant, _ = applications.create("made by curl")
    message = refusal(Provisioner(applications), uid(), Spec(name="mine now", existing_token=tenant.token))
    assert "allowAdoption" in message
    assert applications.owners == {} and applications.find(tenant.token).name == "made by curl"


def test_an_unowned_tenant_is_adopted_with_its_current_token(provisioner, applications):
    tenant, _ = applications.create("made by curl")
    owner = uid()
    result = provisioner.provision(owner, Spec(name="managed", existing_token=tenant.token))
    assert result.adopted and result.application.id == tenant.id
    assert applications.owners == {tenant.id: owner}


def test_a_tenant_another_resource_manages_is_not_adopted(provisioner, applications):
    first = uid()
    created = provisioner.provision(first, Spec(name="created by a resource")).application
    message = refusal(provisioner, uid(), Spec(name="stolen", existing_token=created.token))
    assert "another Application" in message
    assert applications.owners == {created.id: first}  # ownership untouched
    assert applications.find(created.token).name == "created by a resource"  # not renamed either


def test_a_tenant_adopted_by_one_resource_is_not_adopted_by_a_second(provisioner, applications):
    tenant, _ = applications.create("made by curl")
    first = uid()
    provisioner.provision(first, Spec(name="first", existing_token=tenant.token))
    refusal(provisioner, uid(), Spec(name="second", existing_token=tenant.token))
    assert applications.owners == {tenant.id: first}


def test_a_rotated_away_token_never_adopts(provisioner, applications):
    tenant, _ = applications.create("made by curl")
    applications.rotate_token(tenant.id, grace_seconds=3600)
    assert applications.find(tenant.token).id == tenant.id  # the former token still works (grace period)
    message = refusal(provisioner, uid(), Spec(name="leaker", existing_token=tenant.token))
    assert "rotated-away" in message
    assert applications.owners == {}


def test_the_owner_keeps_its_tenant_after_the_token_it_adopted_with_is_rotated_away(provisioner, applications):
    tenant, _ = applications.create("made by curl")
    owner = uid()
    spec = Spec(name="managed", existing_token=tenant.token)
    provisioner.provision(owner, spec)
    rotated, _ = applications.rotate_token(tenant.id, grace_seconds=3600)
    again = provisioner.provision(owner, spec)  # an update or a resumed operator
    assert again.application.token == rotated.token and not again.adopted


def test_a_refused_resource_never_locates_the_tenant_its_token_names(provisioner, applications):
    """Refresh, manage and a ``Delete`` finalizer act on what locate finds: nothing, for a refused adoption."""
    first = uid()
    created = provisioner.provision(first, Spec(name="victim")).application
    thief = uid()
    spec = Spec(name="victim", existing_token=created.token, deletion_policy=Policy.DELETE)
    refusal(provisioner, thief, spec)
    assert provisioner.locate(thief, spec) is None
    released = provisioner.release(thief, spec)
    assert not released.found and applications.find(created.token) is not None


def test_an_owner_cannot_move_to_another_tenant_by_its_existing_token(provisioner, applications):
    mine, _ = applications.create("mine")
    other, _ = applications.create("other")
    owner = uid()
    provisioner.provision(owner, Spec(name="mine", existing_token=mine.token))
    message = refusal(provisioner, owner, Spec(name="mine", existing_token=other.token))
    assert "cannot move" in message


def test_retain_lets_the_tenant_go_so_a_new_resource_may_adopt_it(provisioner, applications):
    tenant, _ = applications.create("made by curl")
    first = uid()
    provisioner.provision(first, Spec(name="managed", existing_token=tenant.token))
    released = provisioner.release(first, Spec(name="managed", existing_token=tenant.token))
    assert released.policy is Policy.RETAIN and released.found
    assert applications.find(tenant.token) is not None  # data kept
    second = uid()
    assert provisioner.provision(second, Spec(name="again", existing_token=tenant.token)).adopted
    assert applications.owners == {tenant.id: second}


def test_creating_without_existing_token_records_the_owner(provisioner, applications):
    owner = uid()
    created = provisioner.provision(owner, Spec(name="new")).application
    assert applications.owners == {created.id: owner}
    assert provisioner.locate(owner, Spec(name="new")).id == created.id
