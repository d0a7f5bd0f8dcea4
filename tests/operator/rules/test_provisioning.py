"""The provisioning rules behind the handlers (create, adopt, rename, locate, release), on the fake tenancy
store (tests/unit/fakes.py): what MySQL itself does is in tests/operator/test_provisioning.py."""

from __future__ import annotations

import pytest

from chat_operator.provisioning import Policy, Rejected, Spec, idempotency_key
from tests.operator.test_provisioning import uid


def test_adopts_an_application_created_through_the_rest_api_and_takes_the_spec_name(provisioner, applications):
    existing, _ = applications.create("made by curl")
    result = provisioner.provision(uid(), Spec(name="Now managed", existing_token=existing.token))
    assert result.adopted and not result.created
    assert result.renamed_from == "made by curl"
    assert result.application.token == existing.token
    assert applications.find(existing.token).name == "Now managed"


def test_adopting_an_unknown_token_is_rejected(provisioner):
    with pytest.raises(Rejected) as info:
        provisioner.provision(uid(), Spec(name="x", existing_token="no-such-token"))
    assert info.value.reason == "ApplicationNotFound"


def test_a_new_name_renames_the_application(provisioner, applications):
    resource = uid()
    first = provisioner.provision(resource, Spec(name="Old name"))
    renamed = provisioner.provision(resource, Spec(name="New name"))
    assert renamed.renamed_from == "Old name"
    assert renamed.application.token == first.application.token
    assert applications.find(first.application.token).name == "New name"


def test_an_invalid_rename_leaves_the_application_as_it_was(provisioner, applications):
    resource = uid()
    app = provisioner.provision(resource, Spec(name="Stable")).application
    with pytest.raises(Rejected):
        provisioner.provision(resource, Spec(name="bad\x00name"))
    assert applications.find(app.token).name == "Stable"


def test_spec_parsing_defaults_to_retain_and_refuses_unknown_policies():
    assert Spec.parse({"name": "a"}) == Spec(name="a", deletion_policy=Policy.RETAIN)
    assert Spec.parse({"name": "a", "deletionPolicy": "Delete"}).deletion_policy is Policy.DELETE
    with pytest.raises(Rejected):
        Spec.parse({"name": "a", "deletionPolicy": "Recycle"})


def test_delete_policy_twice_is_harmless(provisioner):
    resource = uid()
    spec = Spec(name="Twice", deletion_policy=Policy.DELETE)
    provisioner.provision(resource, spec)
    assert provisioner.release(resource, spec).found
    assert not provisioner.release(resource, spec).found


def test_locate_finds_by_uid_never_by_a_token_alone(provisioner, applications):
    resource = uid()
    app = provisioner.provision(resource, Spec(name="Findable")).application
    assert provisioner.locate(resource, Spec(name="Findable")).token == app.token
    assert provisioner.locate(uid(), Spec(name="Findable")) is None
    # Another resource naming the token owns nothing: refresh, manage and Delete act on what locate finds.
    assert provisioner.locate(uid(), Spec(name="x", existing_token=app.token)) is None


def keyed(applications, resource_uid: str) -> int:
    """Applications created under the resource's idempotency key (0 or 1)."""
    return int(idempotency_key(resource_uid) in applications.by_key)


def owner(applications, application_id: int) -> str | None:
    """The uid of the resource that manages the application, if any."""
    return applications.owners.get(application_id)


def refused(provisioner, resource: str, spec: Spec) -> str:
    with pytest.raises(Rejected) as caught:
        provisioner.provision(resource, spec)
    assert caught.value.reason == "AdoptionRefused"
    return caught.value.message


def test_create_issues_a_token_under_the_resource_uid(provisioner, applications):
    resource = uid()
    result = provisioner.provision(resource, Spec(name="Acme"))
    assert result.created and not result.adopted and result.renamed_from is None
    assert len(result.application.token) == 32
    assert applications.find(result.application.token).name == "Acme"
    assert keyed(applications, resource) == 1


def test_re_provisioning_after_a_crash_returns_the_same_application(provisioner, applications):
    # The first attempt committed the row, then the operator died before writing the Secret or status.
    resource = uid()
    first = provisioner.provision(resource, Spec(name="Crashy"))
    again = provisioner.provision(resource, Spec(name="Crashy"))
    assert again.application.token == first.application.token
    assert not again.created
    assert keyed(applications, resource) == 1


@pytest.mark.parametrize(
    "name",
    ["tab\tinside", "\u00a0\u2003", "x" * 256, None, 42],
    ids=["control-character", "unicode-blank", "too-long", "missing", "not-a-string"],
)
def test_names_the_api_refuses_are_rejected_and_nothing_is_created(provisioner, applications, name):
    resource = uid()
    with pytest.raises(Rejected) as info:
        provisioner.provision(resource, Spec(name=name))
    assert info.value.reason == "InvalidSpec"
    assert info.value.message.startswith("spec.name")
    assert keyed(applications, resource) == 0


def test_a_tenant_another_resource_manages_is_never_adopted(provisioner, applications):
    first = uid()
    created = provisioner.provision(first, Spec(name="Owned")).application
    message = refused(provisioner, uid(), Spec(name="Stolen", existing_token=created.token))
    assert "another Application" in message
    assert owner(applications, created.id) == first
    assert applications.find(created.token).name == "Owned"


def test_adoption_is_refused_where_the_deployment_does_not_allow_it(applications):
    from chat_operator.provisioning import Provisioner

    tenant, _ = applications.create("made by curl")
    message = refused(Provisioner(applications), uid(), Spec(name="Mine", existing_token=tenant.token))
    assert "allowAdoption" in message and owner(applications, tenant.id) is None


def test_a_rotated_away_token_never_adopts(provisioner, applications):
    tenant, _ = applications.create("rotated by its owner")
    applications.rotate_token(tenant.id, grace_seconds=3600)
    assert applications.find(tenant.token) is not None  # still valid for requests during the grace period
    assert "rotated-away" in refused(provisioner, uid(), Spec(name="Leaker", existing_token=tenant.token))
    assert owner(applications, tenant.id) is None


def test_retain_releases_the_tenant_for_a_later_adoption(provisioner, applications):
    tenant, _ = applications.create("retained")
    first = uid()
    spec = Spec(name="retained", existing_token=tenant.token)
    provisioner.provision(first, spec)
    assert provisioner.release(first, spec).found and owner(applications, tenant.id) is None
    second = uid()
    assert provisioner.provision(second, spec).adopted and owner(applications, tenant.id) == second
