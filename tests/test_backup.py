"""Backup and restore on real servers: a Valkey of the test's own (it gets wiped) and MLflow stores."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis
from sklearn.linear_model import LogisticRegression

from models.registry import ModelRegistry
from pipeline import keys, receipts, tenants
from pipeline.backup import BackupError, backup, read_manifest, restore
from pipeline.delivery import DeliveryWorker
from pipeline.outbox import Push, enqueue
from pipeline.privacy import PrivacyPolicy
from pipeline.privacy.store import load_policy, save_policy
from pipeline.redis_server import EmbeddedRedis, connect

PUSHPILOT = str(Path(sys.executable).with_name("pushpilot"))
X = pd.DataFrame({"sessions_7d": np.arange(60.0) % 9, "days_since": np.arange(60.0) % 13})
Y = (X["sessions_7d"] > 4).astype(int)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path_factory.mktemp("backup-valkey")) as s:
        yield s


@pytest.fixture
def r(server: EmbeddedRedis) -> Iterator[redis.Redis]:
    client = connect(server.url)
    client.flushall()  # this server is the module's own: a wipe here touches no other test
    yield client
    client.close()


def _registry(where: Path) -> ModelRegistry:
    where.mkdir(parents=True, exist_ok=True)
    return ModelRegistry(f"sqlite:///{where / 'mlflow.db'}", where / "mlartifacts")


def _seed_tenant(r: redis.Redis, registry: ModelRegistry, tenant_id: str,
                 has_models: bool = True) -> dict[str, object]:
    """A tenant with settings, a policy, an API key, receipts, pending pushes and two models."""
    tenants.create_tenant(r, tenant_id, tenants.Plan(sends_per_second=7, max_backlog=5000,
                                                      marketing_per_user_per_day=3))
    tenants.set_webhook_url(r, tenant_id, "https://hooks.example.test/pp")
    save_policy(r, tenant_id, PrivacyPolicy(operators={"EMAIL_ADDRESS": "pseudonymize"},
                                            default_operator="drop"))
    api_key = tenants.create_api_key(r, tenant_id, ["score", "push:send"])
    sent = [Push(tenant_id, f"sent-{i}", f"u{i % 3}", lane="transactional", title="code",
                 body=str(i)) for i in range(4)]
    enqueue(r, sent, is_transactional_fsynced=False)
    worker = DeliveryWorker(r, [tenant_id], consumer="before-backup")
    while worker.deliver_once():
        pass
    pending = [Push(tenant_id, f"pending-{i}", f"u{i % 3}",
                    lane="transactional" if i % 2 else "marketing", body=str(i))
               for i in range(10)]
    enqueue(r, pending, is_transactional_fsynced=False)
    champion = LogisticRegression(C=1.0).fit(X, Y)
    if not has_models:
        return {"api_key": api_key}
    registry.log_model(tenant_id, "propensity", champion, X_example=X,
                       metrics={"roc_auc": 0.91}, params={"C": 1.0})
    registry.log_model(tenant_id, "propensity", LogisticRegression(C=0.01).fit(X, Y),
                       X_example=X, metrics={"roc_auc": 0.7}, params={"C": 0.01})
    return {"api_key": api_key, "sent": [p.push_id for p in sent],
            "pending": [p.push_id for p in pending],
            "scores": champion.predict_proba(X)[:, 1]}


def _snapshot(r: redis.Redis, tenant_id: str) -> dict[str, object]:
    """Everything a user of the tenant can observe, key names made tenant-neutral."""
    state: dict[str, object] = {}
    prefix = keys.tenant_prefix(tenant_id)
    for name in sorted(r.scan_iter(match=keys.tenant_pattern(tenant_id))):
        kind = r.type(name)
        short = name[len(prefix):]
        if kind == "hash":
            state[short] = r.hgetall(name)
        elif kind == "stream":
            state[short] = r.xrange(name)
        elif kind == "set":
            state[short] = sorted(r.smembers(name))
        elif kind == "string":
            state[short] = r.get(name)
        else:
            state[short] = kind
    return state


def _drain(r: redis.Redis, tenant_id: str) -> int:
    worker = DeliveryWorker(r, [tenant_id], consumer="after-restore")
    total = 0
    while n := worker.deliver_once():
        total += n
    return total


def test_a_wiped_deployment_gets_the_tenant_back_whole_and_it_scores_and_delivers(
    r: redis.Redis, tmp_path: Path
) -> None:
    registry = _registry(tmp_path / "mlflow-before")
    seeded = _seed_tenant(r, registry, "shop")
    before = _snapshot(r, "shop")
    plan_before = tenants.get_tenant(r, "shop").plan
    archive = tmp_path / "shop.tar.gz"

    report = backup(r, registry, ["shop"], archive)
    assert report.tenants["shop"]["model_versions"] == 2
    assert report.tenants["shop"]["api_keys"] == 1

    r.flushall()  # the disaster: Redis and the MLflow store are gone
    fresh = _registry(tmp_path / "mlflow-after")
    restored = restore(r, fresh, archive)

    assert restored.tenants == {"shop": "shop"}
    assert tenants.list_tenants(r) == ["shop"]
    assert _snapshot(r, "shop") == before
    assert tenants.get_tenant(r, "shop").plan == plan_before
    assert tenants.webhook_url(r, "shop") == "https://hooks.example.test/pp"
    assert load_policy(r, "shop") == PrivacyPolicy(operators={"EMAIL_ADDRESS": "pseudonymize"},
                                                   default_operator="drop")
    assert tenants.authenticate(r, str(seeded["api_key"])).tenant_id == "shop"
    for push_id in seeded["sent"]:  # type: ignore[attr-defined]
        assert receipts.status_trail(r, "shop", push_id)[-1]["status"] == "delivered"
    for push_id in seeded["pending"]:  # type: ignore[attr-defined]
        assert receipts.status_trail(r, "shop", push_id)[-1]["status"] == "queued"

    versions = fresh.list_versions("shop", "propensity")
    assert [v.version for v in versions] == [1, 2]
    assert [v.metrics["roc_auc"] for v in versions] == [0.91, 0.7]
    assert fresh.describe_version("shop", "propensity", 2)["params"] == {"C": "0.01"}
    model, version = fresh.load_champion("shop")
    assert version == 1  # the champion alias, not just the latest version
    np.testing.assert_array_equal(model.predict_proba(X)[:, 1], seeded["scores"])

    assert _drain(r, "shop") == len(seeded["pending"])  # type: ignore[arg-type]
    assert receipts.status_counts(r, "shop")["delivered"] == 14
    # A restored idempotency guard still refuses a push id that was already accepted.
    again = enqueue(r, [Push("shop", "pending-3", "u0")], is_transactional_fsynced=False)
    assert again.duplicates == ["pending-3"]


def test_restoring_as_a_new_tenant_leaves_the_original_untouched(
    r: redis.Redis, tmp_path: Path
) -> None:
    registry = _registry(tmp_path / "mlflow")
    seeded = _seed_tenant(r, registry, "bank")
    _seed_tenant(r, registry, "other-school", has_models=False)
    archive = tmp_path / "bank.tar.gz"
    backup(r, registry, ["bank"], archive)
    bank_before = _snapshot(r, "bank")

    report = restore(r, registry, archive, as_tenant_id="bank-copy")

    assert report.api_keys_dropped == 1
    assert _snapshot(r, "bank") == bank_before
    copy = _snapshot(r, "bank-copy")
    assert copy == {k: v for k, v in bank_before.items() if k != "apikeys"}
    assert sorted(tenants.list_tenants(r)) == ["bank", "bank-copy", "other-school"]
    # An API key belongs to one tenant: the original keeps it, the copy has none.
    assert tenants.authenticate(r, str(seeded["api_key"])).tenant_id == "bank"
    assert [v.version for v in registry.list_versions("bank", "propensity")] == [1, 2]
    assert registry.describe_version("bank-copy", "propensity", 1)["tags"]["tenant_id"] == "bank-copy"
    model, version = registry.load_champion("bank-copy")
    np.testing.assert_array_equal(model.predict_proba(X)[:, 1], seeded["scores"])
    assert _drain(r, "bank-copy") == 10
    assert receipts.status_counts(r, "bank")["queued"] == 14  # the original's backlog is its own

    # Tenant "other-school"'s data is nowhere in bank's archive.
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        blob = b"".join(tar.extractfile(m).read() for m in tar.getmembers() if m.isfile())
    assert not any("other-school" in n for n in names)
    assert b"other-school" not in blob
    assert [t["tenant_id"] for t in read_manifest(archive)["tenants"]] == ["bank"]

    both = tmp_path / "both.tar.gz"
    backup(r, registry, ["bank", "other-school"], both)
    with pytest.raises(BackupError, match="one-tenant archive"):
        restore(r, registry, both, as_tenant_id="bank-2")


def test_a_corrupt_archive_is_refused_and_restores_nothing(r: redis.Redis, tmp_path: Path) -> None:
    registry = _registry(tmp_path / "mlflow")
    _seed_tenant(r, registry, "news")
    archive = tmp_path / "news.tar.gz"
    backup(r, registry, ["news"], archive)
    r.flushall()
    empty = _registry(tmp_path / "mlflow-empty")

    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(BackupError, match="corrupt"):
        restore(r, empty, truncated)

    # Re-packed with one changed byte in the Redis state and the original manifest.
    tampered = tmp_path / "tampered.tar.gz"
    with tarfile.open(archive) as src, tarfile.open(tampered, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else b""
            if member.name.endswith("redis.jsonl"):
                data = data.replace(b'"expire_at_ms": 0', b'"expire_at_ms": 1', 1)
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    with pytest.raises(BackupError, match="sha256 mismatch"):
        restore(r, empty, tampered)

    not_gzip = tmp_path / "notes.tar.gz"
    not_gzip.write_bytes(gzip.compress(b"not a tar"))
    with pytest.raises(BackupError):
        restore(r, empty, not_gzip)

    assert r.dbsize() == 0
    assert empty.kinds("news") == []


def test_restoring_over_an_existing_tenant_needs_replace(r: redis.Redis, tmp_path: Path) -> None:
    registry = _registry(tmp_path / "mlflow")
    _seed_tenant(r, registry, "games")
    archive = tmp_path / "games.tar.gz"
    backup(r, registry, ["games"], archive)
    before = _snapshot(r, "games")
    with pytest.raises(BackupError, match="already exists"):
        restore(r, registry, archive)
    enqueue(r, [Push("games", "after-backup", "u9")], is_transactional_fsynced=False)

    restore(r, registry, archive, is_replacing=True)

    assert _snapshot(r, "games") == before
    assert [v.version for v in registry.list_versions("games", "propensity")] == [1, 2]
    assert registry.champion_version("games") == 1


def _cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PUSHPILOT_DATA_DIR": str(data_dir)}
    env.pop("PUSHPILOT_REDIS_URL", None)
    return subprocess.run([PUSHPILOT, *args], capture_output=True, text=True, env=env,
                          timeout=180, check=False)


@pytest.mark.slow
def test_the_cli_backs_up_every_tenant_and_restores_one_under_a_new_id(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with EmbeddedRedis(data_dir) as server:
        r = connect(server.url)
        registry = _registry(data_dir)  # the settings' layout: <data_dir>/mlflow.db
        for tenant_id in ("alpha", "beta"):
            tenants.create_tenant(r, tenant_id)
            enqueue(r, [Push(tenant_id, "p1", "u1")], is_transactional_fsynced=False)
        registry.log_model("alpha", "propensity", LogisticRegression().fit(X, Y), X_example=X,
                           metrics={"roc_auc": 0.8}, params={})
        archive = tmp_path / "all.tar.gz"

        made = _cli(data_dir, "backup", "--all", "--out", str(archive))
        assert made.returncode == 0, made.stderr
        assert set(json.loads(made.stdout.splitlines()[-1])["tenants"]) == {"alpha", "beta"}

        one = tmp_path / "alpha.tar.gz"
        assert _cli(data_dir, "backup", "--tenant", "alpha", "--out", str(one)).returncode == 0
        done = _cli(data_dir, "restore", "--in", str(one), "--as", "gamma")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout.splitlines()[-1])["model_versions"] == 1
        assert r.xlen(keys.outbox_stream("gamma", "marketing")) == 1
        assert registry.champion_version("gamma") == 1

        broken = tmp_path / "broken.tar.gz"
        broken.write_bytes(one.read_bytes()[:100])
        failed = _cli(data_dir, "restore", "--in", str(broken), "--as", "delta")
        assert failed.returncode == 2 and "error:" in failed.stderr
        assert not tenants.tenant_exists(r, "delta")
        r.close()
