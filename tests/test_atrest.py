"""Push messages encrypted at rest: sealing, tenant separation, rotation, rewrapping, and that
nothing readable of a push is left in Valkey or a backup, on the real Valkey."""

from __future__ import annotations

import asyncio
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
import websockets

from models.registry import ModelRegistry
from pipeline import atrest, audit, keys, subjects, tenants
from pipeline.atrest import MasterKey, Sealer, SealError, load_or_create_master_key
from pipeline.backup import BackupKey, backup
from pipeline.channels.webhook import WebhookChannel
from pipeline.delivery import DeliveryWorker
from pipeline.errors import InvalidInputError
from pipeline.outbox import Push, enqueue
from pipeline.receipts import status_trails
from pipeline.redis_server import EmbeddedRedis
from serving.gateway import Gateway

TITLE = "Your parcel 7Q4-ZEBRA is here"
BODY = "Collect it at the Elm Street locker before Friday"


@pytest.fixture
def tenant(redis_client: redis.Redis, new_tenant_id: Callable[[str], str]) -> str:
    tenant_id = new_tenant_id("enc")
    tenants.create_tenant(redis_client, tenant_id)
    return tenant_id


@pytest.fixture
def sealer(tmp_path: Path) -> Sealer:
    return Sealer(load_or_create_master_key(tmp_path / "master.key"), refresh_seconds=0)


def drain(worker: DeliveryWorker) -> int:
    total = 0
    while handled := worker.deliver_once():
        total += handled
    return total


def test_a_sealed_message_opens_only_for_its_push_and_only_unchanged(
    redis_client: redis.Redis, tenant: str, sealer: Sealer
) -> None:
    sealed = sealer.seal(redis_client, tenant, "p1", json.dumps({"title": TITLE}))

    assert sealed.startswith("ppe1:1:") and TITLE not in sealed and "7Q4" not in sealed
    assert json.loads(sealer.open(redis_client, tenant, "p1", sealed)) == {"title": TITLE}
    with pytest.raises(SealError, match="does not open for push 'p2'"):
        sealer.open(redis_client, tenant, "p2", sealed)
    flipped = sealed[:-3] + ("A" if sealed[-3] != "A" else "B") + sealed[-2:]
    with pytest.raises(SealError):
        sealer.open(redis_client, tenant, "p1", flipped)
    assert sealer.open(redis_client, tenant, "p1", '{"title": "plain"}') == '{"title": "plain"}'
    assert [e.action for e in audit.read(redis_client, tenant)] == ["data_key.created"]


def test_another_tenants_key_or_another_master_key_cannot_open_it(
    redis_client: redis.Redis, tenant: str, sealer: Sealer, new_tenant_id: Callable[[str], str],
    tmp_path: Path,
) -> None:
    other = new_tenant_id("enc")
    tenants.create_tenant(redis_client, other)
    sealed = sealer.seal(redis_client, tenant, "p1", "secret text")
    sealer.seal(redis_client, other, "p1", "theirs")  # the other tenant has its own data key

    with pytest.raises(SealError, match="does not open"):
        sealer.open(redis_client, other, "p1", sealed)
    stranger = Sealer(load_or_create_master_key(tmp_path / "stranger.key"))
    with pytest.raises(SealError, match="not wrapped by master key"):
        stranger.open(redis_client, tenant, "p1", sealed)


def test_rotation_seals_new_messages_with_a_new_key_and_old_ones_still_open(
    redis_client: redis.Redis, tenant: str, sealer: Sealer
) -> None:
    old = sealer.seal(redis_client, tenant, "p1", "before")
    version = atrest.rotate_data_key(redis_client, sealer.master, tenant, actor="cli:ops")
    new = sealer.seal(redis_client, tenant, "p2", "after")

    assert version == 2 and new.startswith("ppe1:2:") and old.startswith("ppe1:1:")
    assert sealer.open(redis_client, tenant, "p1", old) == "before"
    assert sealer.open(redis_client, tenant, "p2", new) == "after"
    assert atrest.key_versions(redis_client, tenant) == {
        "current": 2, "versions": {1: [sealer.master.key_id], 2: [sealer.master.key_id]}}
    assert [e.action for e in audit.read(redis_client, tenant, action="data_key")] == [
        "data_key.created", "data_key.rotated"]


def test_rewrapping_moves_to_a_new_master_key_without_a_gap(
    redis_client: redis.Redis, tenant: str, sealer: Sealer, tmp_path: Path
) -> None:
    sealed = sealer.seal(redis_client, tenant, "p1", "kept")
    new_master = load_or_create_master_key(tmp_path / "new.key")
    new = Sealer(new_master, refresh_seconds=0)

    assert atrest.rewrap(redis_client, sealer.master, new_master, tenant, actor="cli:ops") == 1
    # Both keys open it while processes move to the new file one by one.
    assert sealer.open(redis_client, tenant, "p1", sealed) == new.open(redis_client, tenant, "p1", sealed) == "kept"
    atrest.rewrap(redis_client, new_master, new_master, tenant, actor="cli:ops", drop_others=True)
    assert new.open(redis_client, tenant, "p1", sealed) == "kept"
    with pytest.raises(SealError):
        Sealer(sealer.master, refresh_seconds=0).open(redis_client, tenant, "p1", sealed)
    with pytest.raises(InvalidInputError, match="does not wrap"):
        atrest.rewrap(redis_client, sealer.master, new_master, tenant, actor="cli:ops")


def test_a_master_key_file_others_can_read_or_that_is_not_a_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    key = load_or_create_master_key(path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert MasterKey.load(path).key_id == key.key_id
    os.chmod(path, 0o644)
    with pytest.raises(InvalidInputError, match="readable by others"):
        MasterKey.load(path)
    bad = tmp_path / "bad.key"
    bad.write_text("not hex")
    bad.chmod(0o600)
    with pytest.raises(InvalidInputError, match="32 bytes of hex"):
        MasterKey.load(bad)
    assert "secret" not in repr(key) and key.key_id in repr(key)


def _everything(redis_corpus: Callable[..., list[tuple[str, bytes]]], url: str,
                tenant_id: str) -> bytes:
    return b"\n".join(k.encode() + b"=" + v
                      for k, v in redis_corpus(url, match=f"pp:{{{tenant_id}}}:*"))


def test_nothing_readable_of_a_push_is_left_in_valkey_or_a_backup_and_users_get_it_in_clear(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, tenant: str, sealer: Sealer,
    endpoint, redis_corpus, tmp_path: Path,
) -> None:
    """The issue's check: grep Valkey (values and DUMPs) and a backup for the title and body."""
    r = redis_client
    tenants.set_webhook_url(r, tenant, endpoint.url)
    pushes = [Push(tenant_id=tenant, push_id="in-app", user_id="u1", lane="transactional",
                   title=TITLE, body=BODY, data={"locker": "Elm Street"}),
              Push(tenant_id=tenant, push_id="hooked", user_id="u1", lane="transactional",
                   channel="webhook", title=TITLE, body=BODY),
              Push(tenant_id=tenant, push_id="refused", user_id="u1", lane="transactional",
                   channel="webhook", title=TITLE, body=BODY)]
    endpoint.script["refused"] = [400]  # dead-lettered with its message
    enqueue(r, pushes, sealer=sealer)
    worker = DeliveryWorker(r, [tenant], consumer="w", max_tries=1,
                            channels={"webhook": WebhookChannel(r, sealer=sealer)})
    drain(worker)
    # And one still queued, as the backlog holds it.
    enqueue(r, [Push(tenant_id=tenant, push_id="waiting", user_id="u2", title=TITLE, body=BODY)],
            sealer=sealer)

    stored = _everything(redis_corpus, redis_server.url, tenant)
    for needle in (TITLE, BODY, "7Q4-ZEBRA", "Elm Street"):
        assert needle.encode() not in stored, needle
    assert b"ppe1:1:" in stored  # the messages are there, sealed

    # Where a push leaves pushpilot, it is in clear: the webhook body ...
    (hooked,) = [json.loads(body) for _, body in endpoint.requests
                 if json.loads(body)["push_id"] == "hooked"]
    assert (hooked["title"], hooked["body"]) == (TITLE, BODY)
    # ... the device's frame ...
    token = tenants.issue_user_token(tenants.tenant_secret(r, tenant), tenant, "u1")

    async def frame() -> dict:
        gateway = Gateway(redis_server.url, sealer=sealer)
        await gateway.start()
        try:
            async with websockets.connect(f"{gateway.url}?token={token}") as ws:
                return json.loads(await asyncio.wait_for(ws.recv(), timeout=15))
        finally:
            await gateway.stop()

    got = asyncio.run(frame())
    assert (got["push_id"], got["title"], got["body"], got["data"]) == (
        "in-app", TITLE, BODY, {"locker": "Elm Street"})
    # ... and a data-subject export, which opens the queued and dead-lettered ones too.
    export = subjects.export_user(r, tenant, "u1", sealer=sealer)
    assert export["inbox"][0]["message"]["title"] == TITLE
    assert [json.loads(json.loads(d["entry"])["m"])["body"] for d in export["dead_letters"]] == [BODY]
    assert subjects.export_user(r, tenant, "u2", sealer=sealer)["queued"][0]["body"] == BODY
    assert "ppe1:" in json.dumps(subjects.export_user(r, tenant, "u2"))  # no key, no text

    # A backup holds ciphertext only (its data keys wrapped by the master key, not in it).
    archive = tmp_path / "backup.tar.gz"
    registry = ModelRegistry(f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "artifacts")
    backup(r, registry, [tenant], archive, key=BackupKey.generate())
    with tarfile.open(archive) as tar:
        everything = b"".join(tar.extractfile(m).read() for m in tar.getmembers() if m.isfile())
    for needle in (TITLE, BODY, "7Q4-ZEBRA"):
        assert needle.encode() not in everything, needle
    key_hex = (tmp_path / "master.key").read_text().strip()
    assert key_hex.encode() not in everything and key_hex.encode() not in stored


def test_a_webhook_worker_without_the_master_key_retries_instead_of_sending_ciphertext(
    redis_client: redis.Redis, tenant: str, sealer: Sealer, endpoint
) -> None:
    tenants.set_webhook_url(redis_client, tenant, endpoint.url)
    enqueue(redis_client, [Push(tenant_id=tenant, push_id="p", user_id="u", lane="transactional",
                                channel="webhook", title=TITLE)], sealer=sealer)
    drain(DeliveryWorker(redis_client, [tenant], consumer="w", max_tries=3, retry_base_ms=0,
                         claim_idle_ms=0))
    assert endpoint.requests == []
    (trail,) = status_trails(redis_client, tenant, ["p"])
    assert trail is not None and trail[-1]["status"] == "dead" and trail[-1]["tries"] == 3, trail
    assert "no master key" in trail[-1]["reason"]


@pytest.mark.slow
def test_the_keys_cli_shows_rotates_and_rewraps_and_refuses_bad_input(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, tenant: str, tmp_path: Path,
) -> None:
    import subprocess
    import sys

    pushpilot = Path(sys.executable).with_name("pushpilot")
    env = {**os.environ, "PUSHPILOT_REDIS_URL": redis_server.url, "PUSHPILOT_DATA_DIR": str(tmp_path),
           "PUSHPILOT_AT_REST_KEY_FILE": str(tmp_path / "master.key")}

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(pushpilot), "keys", *args], env={**env, **extra},
                              capture_output=True, text=True, timeout=120)

    sealer = Sealer(load_or_create_master_key(tmp_path / "master.key"), refresh_seconds=0)
    old = sealer.seal(redis_client, tenant, "p1", "first")
    rotated = run("rotate", "--tenant", tenant)
    assert rotated.returncode == 0, rotated.stderr
    assert json.loads(rotated.stdout) == {"tenant": tenant, "current": 2}
    shown = json.loads(run("show", "--tenant", tenant).stdout)
    assert shown["current"] == 2 and list(shown["versions"]) == ["1", "2"]

    rewrapped = run("rewrap", "--new-key-file", str(tmp_path / "new.key"), "--tenant", tenant)
    assert rewrapped.returncode == 0, rewrapped.stderr
    assert json.loads(rewrapped.stdout)["versions_rewrapped"] == {tenant: 2}
    moved = Sealer(MasterKey.load(tmp_path / "new.key"), refresh_seconds=0)
    assert moved.open(redis_client, tenant, "p1", old) == "first"
    dropped = run("rewrap", "--new-key-file", str(tmp_path / "new.key"), "--tenant", tenant,
                  "--drop-old", PUSHPILOT_AT_REST_KEY_FILE=str(tmp_path / "new.key"))
    assert dropped.returncode == 0, dropped.stderr
    with pytest.raises(SealError):
        Sealer(sealer.master, refresh_seconds=0).open(redis_client, tenant, "p1", old)

    before = redis_client.hgetall(keys.data_keys(tenant))
    refused = run("rotate", "--tenant", tenant)  # the old key no longer wraps this tenant's
    assert refused.returncode != 0 and "does not wrap" in refused.stderr
    unknown = run("rotate", "--tenant", "no-such-tenant")
    assert unknown.returncode != 0 and "no-such-tenant" in unknown.stderr
    assert redis_client.hgetall(keys.data_keys(tenant)) == before
