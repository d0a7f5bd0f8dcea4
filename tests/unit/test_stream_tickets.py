"""Stream tickets on fakes: signing and verifying (keys, rotation with a grace, expiry, scope to one chat), and the
tenant rules over them (a token rotation or a suspension refuses every ticket minted before it); the CORS rule and a
tenant's own origins."""

from __future__ import annotations

import base64

import orjson
import pytest

from chat_api.model import Invalid, NotFound, Suspended
from chat_api.use_cases.cors import allowed_origin, cors_headers, parse_origins
from chat_api.use_cases.tickets import (
    TicketHolder,
    TicketRefused,
    TicketSigner,
    TicketsNotConfigured,
    parse_keys,
)
from chat_common.tenancy.tokens import token_digest
from chat_common.validation import clean_origins
from tests.unit.fakes import TICKET_KEY, FakeClock

OLD_KEY = b"an-old-stream-ticket-key-which-retires-soon"
DIGEST = token_digest("some-token")


def signer(*keys: bytes, clock: FakeClock | None = None, lifetime: int = 300) -> TicketSigner:
    return TicketSigner(keys, lifetime, clock or FakeClock())


def refusal(call) -> str:
    with pytest.raises(TicketRefused) as refused:
        call()
    return refused.value.reason


# -- the signature and the claims -------------------------------------------------------------------------------
def test_a_ticket_names_its_chat_and_expires_after_the_lifetime():
    clock = FakeClock()
    ticket, expires_at = signer(TICKET_KEY, clock=clock, lifetime=300).sign(DIGEST, 7)
    assert expires_at == int(clock.now) + 300
    claims = signer(TICKET_KEY, clock=clock).verify(ticket, 7)
    assert (claims.token_digest, claims.chat_number, claims.expires_at) == (DIGEST, 7, expires_at)
    assert "some-token" not in ticket  # the token never travels in a ticket


def test_an_expired_ticket_is_refused():
    clock = FakeClock()
    tickets = signer(TICKET_KEY, clock=clock, lifetime=300)
    ticket, _ = tickets.sign(DIGEST, 1)
    clock.advance(299)
    tickets.verify(ticket)
    clock.advance(1)
    assert refusal(lambda: tickets.verify(ticket)) == "expired"


def test_a_ticket_for_another_chat_is_refused():
    tickets = signer(TICKET_KEY)
    ticket, _ = tickets.sign(DIGEST, 1)
    assert refusal(lambda: tickets.verify(ticket, 2)) == "other_chat"


def test_a_forged_or_altered_ticket_is_refused():
    tickets = signer(TICKET_KEY)
    ticket, _ = tickets.sign(DIGEST, 1)
    prefix, claims, mac = ticket.split(".")
    other_chat = base64.urlsafe_b64encode(orjson.dumps({"d": DIGEST, "c": 2, "x": 2_000_000_000})).rstrip(b"=")
    altered = f"{prefix}.{other_chat.decode()}.{mac}"
    assert refusal(lambda: tickets.verify(altered)) == "forged"
    forged, _ = signer(b"somebody-elses-key-of-enough-length-000").sign(DIGEST, 1)
    assert refusal(lambda: tickets.verify(forged)) == "forged"
    for malformed in ("", "st1", "st1.a.b.c", "st2." + claims + "." + mac, "x" * 600, "st1.é.b"):
        assert refusal(lambda m=malformed: tickets.verify(m)) in {"malformed", "forged"}


def test_key_rotation_the_first_key_signs_and_every_key_verifies():
    before = signer(OLD_KEY)
    old_ticket, _ = before.sign(DIGEST, 1)
    during = signer(TICKET_KEY, OLD_KEY)  # the grace: the new key signs, the old one still verifies
    new_ticket, _ = during.sign(DIGEST, 1)
    assert during.verify(old_ticket).chat_number == 1
    assert refusal(lambda: before.verify(new_ticket)) == "forged"  # signed with the new key, not the old
    after = signer(TICKET_KEY)  # the old key dropped after the longest ticket lifetime
    assert after.verify(new_ticket).chat_number == 1
    assert refusal(lambda: after.verify(old_ticket)) == "forged"


def test_without_keys_no_ticket_is_signed_or_verified():
    with pytest.raises(TicketsNotConfigured):
        signer().sign(DIGEST, 1)
    with pytest.raises(TicketsNotConfigured):
        signer().verify("st1.a.b")


def test_the_keys_setting_is_a_comma_separated_list_of_long_enough_keys():
    assert parse_keys(None) == () and parse_keys("") == ()
    assert parse_keys(f"{TICKET_KEY.decode()}, {OLD_KEY.decode()}") == (TICKET_KEY, OLD_KEY)
    with pytest.raises(ValueError, match="key 2 is shorter than 32"):
        parse_keys(f"{TICKET_KEY.decode()},short")


# -- the tenant rules over tickets ------------------------------------------------------------------------------
async def test_a_minted_ticket_opens_its_chat_without_the_token(service, world):
    app = world.application()
    await service.create_chat(app.token, "room")
    world.deliver()
    minted, _ = await service.mint_stream_ticket(app.token, 1)
    assert minted["chat_number"] == 1 and minted["expires_at"] == int(world.clock.now) + 300
    application, claims, after = await service.open_ticket(minted["ticket"])
    assert application.id == app.id and claims.chat_number == 1 and after == 0
    assert (await service.open_ticket(minted["ticket"], 5))[2] == 5
    assert set(world.tenants.called("lookup_digest")) == {(token_digest(app.token),)}  # no token, no MySQL


async def test_minting_follows_the_tenant_rules_and_the_chat_must_exist(service, world):
    app = world.application()
    with pytest.raises(NotFound, match="chat not found"):
        await service.mint_stream_ticket(app.token, 1)
    with pytest.raises(NotFound):
        await service.mint_stream_ticket("nobody-has-this-token", 1)
    await service.create_chat(app.token, "room")
    world.deliver()
    await service.suspend_application(app.token, True)
    with pytest.raises(Suspended):
        await service.mint_stream_ticket(app.token, 1)


async def test_a_rotation_refuses_every_ticket_minted_before_it_and_the_former_token_mints_none(service, world):
    app = world.application()
    await service.create_chat(app.token, "room")
    world.deliver()
    before = (await service.mint_stream_ticket(app.token, 1))[0]["ticket"]
    holder = TicketHolder(token_digest(app.token))
    assert await service.stream_standing(holder) is None
    rotated = await service.rotate_token(app.token, 3600)  # the former token keeps its grace...
    with pytest.raises(TicketRefused) as refused:
        await service.open_ticket(before)  # ...its tickets do not
    assert refused.value.reason == "rotated"
    assert (await service.stream_standing(holder))[0] == "expired_token"  # open streams end too
    with pytest.raises(TicketRefused):
        await service.mint_stream_ticket(app.token, 1)
    after = (await service.mint_stream_ticket(rotated.token, 1))[0]["ticket"]
    assert (await service.open_ticket(after))[0].id == app.id


async def test_a_suspension_refuses_tickets_and_ends_their_streams_and_a_resume_restores_them(service, world):
    app = world.application()
    await service.create_chat(app.token, "room")
    world.deliver()
    ticket = (await service.mint_stream_ticket(app.token, 1))[0]["ticket"]
    await service.suspend_application(app.token, True)
    with pytest.raises(Suspended):
        await service.open_ticket(ticket)
    reason, error = await service.stream_standing(TicketHolder(token_digest(app.token)))
    assert (reason, error) == ("suspended", "application suspended")
    await service.suspend_application(app.token, False)
    assert (await service.open_ticket(ticket))[1].chat_number == 1


async def test_a_ticket_of_a_deleted_application_opens_nothing(service, world):
    app = world.application()
    await service.create_chat(app.token, "room")
    world.deliver()
    ticket = (await service.mint_stream_ticket(app.token, 1))[0]["ticket"]
    await service.delete_application(app.token)
    with pytest.raises(NotFound):
        await service.open_ticket(ticket)
    assert (await service.stream_standing(TicketHolder(token_digest(app.token))))[0] == "unknown"


async def test_an_expired_ticket_is_refused_by_the_service(service, world):
    app = world.application()
    await service.create_chat(app.token, "room")
    world.deliver()
    ticket = (await service.mint_stream_ticket(app.token, 1))[0]["ticket"]
    world.clock.advance(300)
    with pytest.raises(TicketRefused):
        await service.open_ticket(ticket)


# -- CORS: the rule, and the tenant's own list ------------------------------------------------------------------
def test_cors_answers_the_asking_origin_when_listed_never_a_list_and_never_credentials():
    allowed = parse_origins("https://app.example, http://127.0.0.1:8000,")
    assert allowed == ("https://app.example", "http://127.0.0.1:8000")
    assert allowed_origin("https://app.example", allowed) == "https://app.example"
    assert allowed_origin("https://evil.example", allowed) is None
    assert allowed_origin(None, allowed) is None and allowed_origin("https://app.example", ()) is None
    assert allowed_origin("https://any.example", ("*",)) == "*"
    headers = cors_headers("https://app.example", allowed)
    assert headers["Access-Control-Allow-Origin"] == "https://app.example" and headers["Vary"] == "Origin"
    assert cors_headers("https://evil.example", allowed) == {"Vary": "Origin"}
    preflight = cors_headers("http://127.0.0.1:8000", allowed, preflight=True)
    assert "POST" in preflight["Access-Control-Allow-Methods"]
    for headers in (cors_headers("https://x.example", ("*",)), preflight):
        assert "Access-Control-Allow-Credentials" not in headers


def test_an_origin_list_holds_origins_only():
    for bad in ("https://app.example/", "https://app.example/path", "ftp://app.example", "app.example", "null"):
        with pytest.raises(Invalid):
            clean_origins([bad])
    with pytest.raises(Invalid, match="at most 50"):
        clean_origins([f"https://h{i}.example" for i in range(51)])
    assert clean_origins(["https://A.example", "https://a.example"]) == ("https://a.example",)
    assert clean_origins("") == () and clean_origins("https://a.example,http://b.example:81") == (
        "https://a.example",
        "http://b.example:81",
    )
    for bad in (" https://a.example", "https://a.example,", "https://a.example, http://b.example", [" "]):
        with pytest.raises(Invalid):
            clean_origins(bad)


async def test_a_tenants_own_origins_are_set_shown_and_reset_by_the_admin(service, world):
    app = world.application()
    assert app.admin()["cors_origins"] is None  # the deployment's
    changed = await service.set_cors_origins(app.token, {"origins": ["https://app.example"]})
    assert changed.cors_origins == ("https://app.example",)
    assert changed.admin()["cors_origins"] == ["https://app.example"]
    assert (await service.set_cors_origins(app.token, {"origins": None})).cors_origins is None
    for bad in ({"origins": ["nope"]}, {"origin": []}, None):
        with pytest.raises(Invalid):
            await service.set_cors_origins(app.token, bad)
