"""The edge without Ray: PII-shaped user ids and push text, device acks on the real gateway."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pandas as pd
import pytest
import websockets

from pipeline import keys, receipts, tenants
from pipeline.delivery import DeliveryWorker
from pipeline.errors import InvalidInputError
from pipeline.outbox import Push, enqueue
from pipeline.privacy import PrivacyPolicy, pseudonymize, save_policy
from pipeline.privacy.edge import EdgeScreen
from serving.gateway import Gateway

SECRET = b"s" * 32


@pytest.fixture(scope="module")
def screen() -> EdgeScreen:
    return EdgeScreen()


@pytest.mark.parametrize(
    ("user_id", "kind"),
    [
        ("alice@example.com", "EMAIL_ADDRESS"),
        ("user:alice@example.com", "EMAIL_ADDRESS"),
        ("415-555-0123", "PHONE_NUMBER"),
        ("13800138000", "PHONE_NUMBER"),
        ("4111111111111111", "CREDIT_CARD"),
        ("110101199003074514", "CN_RESIDENT_ID"),
        ("192.168.1.1", "IP_ADDRESS"),
    ],
)
def test_a_pii_shaped_user_id_is_refused_by_default_without_echoing_it(
    screen: EdgeScreen, user_id: str, kind: str
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        screen.user_id(user_id, PrivacyPolicy.default(), SECRET, "user_ids.0")
    assert caught.value.field == "user_ids.0"
    assert kind in caught.value.problem and user_id not in str(caught.value)


@pytest.mark.parametrize(
    "user_id", ["u000123", "user_42", "550e8400-e29b-41d4-a716-446655440000", "cust:000123"]
)
def test_ordinary_ids_pass_unchanged(screen: EdgeScreen, user_id: str) -> None:
    assert screen.user_id(user_id, PrivacyPolicy.default(), SECRET, "user_id") == user_id


@pytest.mark.parametrize("user_id", ["a{b}", "", "two words", "x" * 129])
def test_an_id_that_cannot_be_a_key_is_refused(screen: EdgeScreen, user_id: str) -> None:
    with pytest.raises(InvalidInputError, match="1-128 of"):
        screen.user_id(user_id, PrivacyPolicy.default(), SECRET, "user_id")


def test_pseudonymised_ids_match_the_batch_paths_pseudonyms(screen: EdgeScreen) -> None:
    policy = PrivacyPolicy(user_ids="pseudonymize")
    stored = screen.user_id("Alice@Example.com", policy, SECRET, "user_id")
    batch = pseudonymize(pd.Series(["alice@example.com"]), SECRET, "EMAIL_ADDRESS")[0]
    assert stored == batch and "@" not in stored
    assert screen.user_id("c:alice@example.com", policy, SECRET, "user_id") == f"c:{batch}"
    # Keyed by the tenant's secret: another tenant gets another pseudonym.
    assert screen.user_id("alice@example.com", policy, b"o" * 32, "user_id") != batch


def test_push_text_masks_contact_data_by_default_and_follows_the_policy(
    screen: EdgeScreen,
) -> None:
    text = screen.push_text("Call 415-555-0123", "mail bob@example.com now", {"ip": "10.1.2.3"},
                            PrivacyPolicy.default(), SECRET)
    assert (text.title, text.body, text.data) == ("Call ****", "mail **** now", {"ip": "****"})
    assert text.replaced == {"PHONE_NUMBER": 1, "EMAIL_ADDRESS": 1, "IP_ADDRESS": 1}

    keep = PrivacyPolicy(push_operators={"PHONE_NUMBER": "keep"})
    assert screen.push_text("Call 415-555-0123", "", {}, keep, SECRET).title == "Call 415-555-0123"
    reject = PrivacyPolicy(push_operators={"EMAIL_ADDRESS": "reject"})
    with pytest.raises(InvalidInputError) as caught:
        screen.push_text("hi", "x", {"to": "bob@example.com"}, reject, SECRET)
    assert caught.value.field == "data.to"


def test_the_policy_round_trips_its_edge_fields_and_refuses_bad_ones() -> None:
    policy = PrivacyPolicy.from_text(
        "user_ids: pseudonymize\npush_operators:\n  PHONE_NUMBER: reject\n", where="body"
    )
    assert policy.user_ids == "pseudonymize" and policy.push_operator_for("PHONE_NUMBER") == "reject"
    assert policy.push_operator_for("EMAIL_ADDRESS") == "mask"  # the defaults stay under it
    with pytest.raises(InvalidInputError, match="line 1: unknown user_ids mode"):
        PrivacyPolicy.from_text("user_ids: shrug\n", where="body")


def test_tenant_token_refuses_ids_that_cannot_be_keys_or_hold_pii(
    redis_server, redis_client, new_tenant_id, settings
) -> None:
    tenant_id = new_tenant_id("tok")
    tenants.create_tenant(redis_client, tenant_id)
    env = {"PUSHPILOT_REDIS_URL": redis_server.url, "PUSHPILOT_DATA_DIR": str(settings.data_dir)}

    def token(user: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "serving.cli", "tenant", "token", tenant_id, "--user", user],
            capture_output=True, text=True, timeout=120, env={**_base_env(), **env},
        )

    for bad in ("a{b}", "alice@example.com"):
        result = token(bad)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("error: --user:") and result.stdout == ""
    good = token("u000001")
    assert good.returncode == 0, good.stderr
    assert tenants.verify_user_token(tenants.tenant_secret(redis_client, tenant_id),
                                     good.stdout.strip()) == (tenant_id, "u000001")
    save_policy(redis_client, tenant_id, PrivacyPolicy(user_ids="pseudonymize"))
    pseudo = token("alice@example.com")
    assert pseudo.returncode == 0, pseudo.stderr
    _, user = tenants.verify_user_token(tenants.tenant_secret(redis_client, tenant_id),
                                        pseudo.stdout.strip())
    assert user.startswith("EMAIL_ADDRESS_") and "inbox of" in pseudo.stderr


def _base_env() -> dict[str, str]:
    import os

    return dict(os.environ)


# --- acks -------------------------------------------------------------------------------------


def _deliver(r, tenant_id: str, pushes: dict[str, str]) -> dict[str, str]:
    """push id -> user; enqueued and delivered by a real worker. Returns push id -> entry id."""
    enqueue(r, [Push(tenant_id=tenant_id, push_id=p, user_id=u, lane="transactional")
                for p, u in pushes.items()])
    worker = DeliveryWorker(r, [tenant_id], consumer="edge")
    while worker.deliver_once():
        pass
    entries = {}
    for user in set(pushes.values()):
        for entry_id, fields in r.xrange(keys.inbox_stream(tenant_id, user)):
            entries[fields["push_id"]] = entry_id
    return entries


def _statuses(r, tenant_id: str, push_id: str) -> list[str]:
    return [s["status"] for s in receipts.status_trail(r, tenant_id, push_id) or []]


def test_acks_count_only_for_entries_of_the_users_own_inbox(redis_client, new_tenant_id) -> None:
    r = redis_client
    tenant_id = new_tenant_id("ack")
    other = new_tenant_id("ack")
    for t in (tenant_id, other):
        tenants.create_tenant(r, t)
    entries = _deliver(r, tenant_id, {"p1": "u1", "p2": "u2"})
    other_entries = _deliver(r, other, {"p2": "u1"})

    # u1 names u2's push with u2's entry id, with its own entry id, and with no entry id.
    forged = [receipts.InboxAck("u1", entries["p2"], "p2"),
              receipts.InboxAck("u1", entries["p1"], "p2"),
              receipts.InboxAck("u1", "", "p2"),
              receipts.InboxAck("u1", "garbage", "p2")]
    assert receipts.ack_inbox(r, tenant_id, forged) == (1, 0)  # its own entry moved the cursor
    assert "acked" not in _statuses(r, tenant_id, "p2")
    assert "acked" not in _statuses(r, tenant_id, "p1")  # naming p2 does not ack p1 either
    # Nor can a tenant's device ack another tenant's push of the same id.
    assert receipts.ack_inbox(r, tenant_id, [receipts.InboxAck("u1", other_entries["p2"], "p2")]
                              ) == (0, 0)
    assert "acked" not in _statuses(r, other, "p2")

    assert receipts.ack_inbox(r, tenant_id, [receipts.InboxAck("u2", entries["p2"], "p2")]
                              ) == (1, 1)
    assert _statuses(r, tenant_id, "p2")[-1] == "acked"
    # The cursor moves only forward, and only to an entry of the user's inbox.
    assert r.get(keys.inbox_cursor(tenant_id, "u1")) == entries["p1"]
    assert receipts.ack_inbox(r, tenant_id, [receipts.InboxAck("u1", "0-1", "")]) == (0, 0)
    assert r.get(keys.inbox_cursor(tenant_id, "u1")) == entries["p1"]


async def _frames(url: str, token: str, n: int, send: list[dict] | None = None) -> list[dict]:
    async with websockets.connect(url + f"?token={token}") as ws:
        got = [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(n)]
        for message in send or []:
            await ws.send(json.dumps(message))
        await asyncio.sleep(0.3)  # the gateway flushes acks every 20 ms
    return got


def test_on_the_gateway_a_device_cannot_ack_another_users_push_or_break_its_cursor(
    redis_server, redis_client, new_tenant_id
) -> None:
    r = redis_client
    tenant_id = new_tenant_id("gwack")
    tenants.create_tenant(r, tenant_id)
    secret = tenants.tenant_secret(r, tenant_id)
    entries = _deliver(r, tenant_id, {"mine": "u1", "theirs": "u2"})
    token1 = tenants.issue_user_token(secret, tenant_id, "u1")

    async def scenario() -> list[dict]:
        gateway = Gateway(redis_server.url)
        await gateway.start()
        try:
            (frame,) = await _frames(gateway.url, token1, 1, send=[
                {"ack": entries["theirs"], "push_id": "theirs"},  # u2's entry and push
                {"ack": entries["mine"], "push_id": "theirs"},  # own entry, u2's push
                {"push_id": "theirs"},
                {"ack": "not-an-id{x}", "push_id": "mine"},
            ])
            assert frame["push_id"] == "mine"
            # The garbage ack did not become the cursor: a new connection still works.
            _deliver(r, tenant_id, {"later": "u1"})
            again = await _frames(gateway.url, token1, 1)
            return [frame, *again]
        finally:
            await gateway.stop()

    frames = asyncio.run(scenario())
    # Its own entry id moved the cursor (to "mine", not to u2's entry): the next connection
    # resumes after it.
    assert [f["push_id"] for f in frames[1:]] == ["later"]
    assert "acked" not in _statuses(r, tenant_id, "theirs")
    assert "acked" not in _statuses(r, tenant_id, "mine")  # its ack named another push
    assert r.get(keys.inbox_cursor(tenant_id, "u1")) == entries["mine"]


def test_a_garbage_cursor_stored_before_the_fix_or_sent_as_last_id_does_not_break_the_inbox(
    redis_server, redis_client, new_tenant_id
) -> None:
    r = redis_client
    tenant_id = new_tenant_id("gwcur")
    tenants.create_tenant(r, tenant_id)
    token = tenants.issue_user_token(tenants.tenant_secret(r, tenant_id), tenant_id, "u1")
    _deliver(r, tenant_id, {"p1": "u1"})
    r.set(keys.inbox_cursor(tenant_id, "u1"), "garbage")  # what old versions stored

    async def scenario() -> tuple[list[dict], int | None]:
        gateway = Gateway(redis_server.url)
        await gateway.start()
        try:
            frames = await _frames(gateway.url, token, 1)
            async with websockets.connect(gateway.url + f"?token={token}&last_id=zzz") as ws:
                try:
                    await asyncio.wait_for(ws.recv(), 10)
                    code = None
                except websockets.ConnectionClosed as e:
                    code = e.rcvd.code if e.rcvd else None
            return frames, code
        finally:
            await gateway.stop()

    frames, code = asyncio.run(scenario())
    assert [f["push_id"] for f in frames] == ["p1"]
    assert code == 4400
