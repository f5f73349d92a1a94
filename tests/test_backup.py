"""Backup and restore on real servers: a Valkey of the test's own (it gets wiped) and MLflow stores."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import pickle
import stat
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
from pipeline.backup import (
    BackupError,
    BackupKey,
    backup,
    load_or_create_key,
    read_manifest,
    restore,
)
from pipeline.delivery import DeliveryWorker
from pipeline.errors import AuthError
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
def key(tmp_path: Path) -> BackupKey:
    """The operator's backup key, in a 0600 file as the CLI keeps it."""
    made = BackupKey.generate()
    made.save(tmp_path / "backup.key")
    return made


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
    r: redis.Redis, tmp_path: Path, key: BackupKey
) -> None:
    registry = _registry(tmp_path / "mlflow-before")
    seeded = _seed_tenant(r, registry, "shop")
    before = _snapshot(r, "shop")
    plan_before = tenants.get_tenant(r, "shop").plan
    archive = tmp_path / "shop.tar.gz"

    report = backup(r, registry, ["shop"], archive, key=key)
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600  # it holds the tenant's secret
    assert report.tenants["shop"]["model_versions"] == 2
    assert report.tenants["shop"]["api_keys"] == 1

    r.flushall()  # the disaster: Redis and the MLflow store are gone
    fresh = _registry(tmp_path / "mlflow-after")
    restored = restore(r, fresh, archive, key=key, tenant_ids=["shop"])

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
    r: redis.Redis, tmp_path: Path, key: BackupKey
) -> None:
    registry = _registry(tmp_path / "mlflow")
    seeded = _seed_tenant(r, registry, "bank")
    _seed_tenant(r, registry, "other-school", has_models=False)
    archive = tmp_path / "bank.tar.gz"
    backup(r, registry, ["bank"], archive, key=key)
    bank_before = _snapshot(r, "bank")

    report = restore(r, registry, archive, key=key, tenant_ids=["bank"],
                     as_tenant_id="bank-copy")

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
    assert [t["tenant_id"] for t in read_manifest(archive, key=key)["tenants"]] == ["bank"]

    both = tmp_path / "both.tar.gz"
    backup(r, registry, ["bank", "other-school"], both, key=key)
    with pytest.raises(BackupError, match="--as renames one tenant"):
        restore(r, registry, both, key=key, tenant_ids=["bank", "other-school"],
                as_tenant_id="bank-2")


def test_a_corrupt_archive_is_refused_and_restores_nothing(
    r: redis.Redis, tmp_path: Path, key: BackupKey
) -> None:
    registry = _registry(tmp_path / "mlflow")
    _seed_tenant(r, registry, "news")
    archive = tmp_path / "news.tar.gz"
    backup(r, registry, ["news"], archive, key=key)
    r.flushall()
    empty = _registry(tmp_path / "mlflow-empty")

    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(BackupError, match="corrupt"):
        restore(r, empty, truncated, key=key, tenant_ids=["news"])

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
        restore(r, empty, tampered, key=key, tenant_ids=["news"])

    not_gzip = tmp_path / "notes.tar.gz"
    not_gzip.write_bytes(gzip.compress(b"not a tar"))
    with pytest.raises(BackupError):
        restore(r, empty, not_gzip, key=key, tenant_ids=["news"])

    assert r.dbsize() == 0
    assert empty.kinds("news") == []


def test_restoring_over_an_existing_tenant_needs_replace(
    r: redis.Redis, tmp_path: Path, key: BackupKey
) -> None:
    registry = _registry(tmp_path / "mlflow")
    _seed_tenant(r, registry, "games")
    archive = tmp_path / "games.tar.gz"
    backup(r, registry, ["games"], archive, key=key)
    before = _snapshot(r, "games")
    with pytest.raises(BackupError, match="already exists"):
        restore(r, registry, archive, key=key, tenant_ids=["games"])
    enqueue(r, [Push("games", "after-backup", "u9")], is_transactional_fsynced=False)

    restore(r, registry, archive, key=key, tenant_ids=["games"], is_replacing=True)

    assert _snapshot(r, "games") == before
    assert [v.version for v in registry.list_versions("games", "propensity")] == [1, 2]
    assert registry.champion_version("games") == 1


class _RunsCodeWhenUnpickled:
    """A hostile "model": unpickling it creates ``marker``, as any code could run instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.marker), "w")


def _everything(r: redis.Redis, *folders: Path) -> dict[str, object]:
    """A full SCAN of the server (each key's DUMP, whether it expires), its ACL users, and the
    sha256 of every file under ``folders``."""
    from redis.client import NEVER_DECODE

    state: dict[str, object] = {"acl": sorted(r.acl_list())}
    for name in sorted(r.scan_iter(count=1000)):
        state[f"redis {name}"] = (r.execute_command("DUMP", name, **{NEVER_DECODE: []}),
                                  r.pttl(name) > 0)
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                state[f"file {path}"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def _unpack(archive: Path, into: Path) -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into


def _repack(folder: Path, out: Path, signed_by: BackupKey | None | str) -> Path:
    """Re-tar ``folder`` with a self-consistent manifest: every file's sha256 computed again.

    ``signed_by`` a key signs the new manifest, None drops the signature, "keep" leaves the
    original signature, "claim" writes one with the right key id and a made-up MAC.
    """
    manifest_path, sig_path = folder / "manifest.json", folder / "manifest.sig"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"] = {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path not in (manifest_path, sig_path)
    }
    manifest_bytes = json.dumps(manifest, indent=1, sort_keys=True).encode()
    manifest_path.write_bytes(manifest_bytes)
    if signed_by is None:
        sig_path.unlink(missing_ok=True)
    elif signed_by == "claim":
        claimed = json.loads(sig_path.read_text()) if sig_path.exists() else {}
        sig_path.write_text(json.dumps({**claimed, "mac": hashlib.sha256(manifest_bytes).hexdigest()}))
    elif isinstance(signed_by, BackupKey):
        sig_path.write_bytes(signed_by.sign(manifest_bytes))
    with tarfile.open(out, "w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=path.relative_to(folder).as_posix())
    return out


def _raw_dump(r: redis.Redis, name: str) -> str:
    from redis.client import NEVER_DECODE

    return base64.b64encode(r.execute_command("DUMP", name, **{NEVER_DECODE: []})).decode()


def _add_records(folder: Path, tenant_id: str, records: list[dict[str, object]]) -> None:
    with open(folder / "tenants" / tenant_id / "redis.jsonl", "a") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


def _map_api_key(folder: Path, tenant_id: str, digest: str, owner: str) -> None:
    path = folder / "tenants" / tenant_id / "globals.json"
    index = json.loads(path.read_text())
    index["api_key_index"][digest] = owner
    path.write_text(json.dumps(index))


def _attack(r: redis.Redis, folder: Path, marker: Path) -> str:
    """What the live attack did to mallory's archive; returns the attacker's API key."""
    payload = _raw_dump(r, keys.tenant_meta("mallory"))
    _add_records(folder, "mallory", [
        {"key": keys.tenant_meta("bank"), "expire_at_ms": 0, "dump": payload},
        {"key": keys.api_key_index(), "expire_at_ms": 0, "dump": payload},
        {"key": keys.tenant_api_keys("bank"), "expire_at_ms": 0, "dump": payload},
    ])
    attacker_key = "ppk_deadbeef_" + "x" * 43
    _map_api_key(folder, "mallory", tenants.key_digest(attacker_key), "bank")
    pickles = sorted((folder / "tenants" / "mallory" / "models").rglob("model.skops"))
    assert pickles
    for path in pickles:
        path.write_bytes(pickle.dumps(_RunsCodeWhenUnpickled(marker)))
    return attacker_key


def _victim_and_attacker(r: redis.Redis, tmp_path: Path, key: BackupKey) -> tuple[ModelRegistry, Path]:
    """Tenants bank (the victim) and mallory, both with models, and mallory's signed archive."""
    registry = _registry(tmp_path / "mlflow")
    _seed_tenant(r, registry, "bank")
    _seed_tenant(r, registry, "mallory")
    archive = tmp_path / "mallory.tar.gz"
    backup(r, registry, ["mallory"], archive, key=key)
    return registry, archive


@pytest.mark.parametrize("signature", ["none", "another key", "the original", "a made-up MAC"])
def test_a_crafted_self_consistent_archive_is_refused_and_changes_nothing(
    r: redis.Redis, tmp_path: Path, key: BackupKey, signature: str
) -> None:
    registry, archive = _victim_and_attacker(r, tmp_path, key)
    marker = tmp_path / "pickle-ran"
    folder = _unpack(archive, tmp_path / "crafted")
    attacker_key = _attack(r, folder, marker)
    signed_by = {"none": None, "another key": BackupKey.generate(), "the original": "keep",
                 "a made-up MAC": "claim"}[signature]
    crafted = _repack(folder, tmp_path / "crafted.tar.gz", signed_by)
    read_manifest(archive, key=key)  # the untouched archive verifies
    before = _everything(r, tmp_path / "mlflow")

    with pytest.raises(BackupError, match="not signed|signed with backup key|fails its signature"):
        restore(r, registry, crafted, key=key, tenant_ids=["mallory"], is_replacing=True)
    with pytest.raises(BackupError, match="not signed|signed with backup key|fails its signature"):
        read_manifest(crafted, key=key)

    assert _everything(r, tmp_path / "mlflow") == before
    assert not marker.exists()
    with pytest.raises(AuthError):
        tenants.authenticate(r, attacker_key)
    # The real thing still loads: mallory's own champion was never replaced by the pickle.
    registry.load_champion("mallory")
    assert not marker.exists()


def test_a_signed_archive_restores_only_the_named_tenant_and_only_its_own_keys(
    r: redis.Redis, tmp_path: Path, key: BackupKey
) -> None:
    registry, archive = _victim_and_attacker(r, tmp_path, key)
    bank_key = tenants.create_api_key(r, "bank", ["admin"])
    before = _everything(r, tmp_path / "mlflow")

    def refused(crafted: Path, match: str, tenant_id: str = "mallory") -> None:
        with pytest.raises(BackupError, match=match):
            restore(r, registry, crafted, key=key, tenant_ids=[tenant_id], is_replacing=True)
        assert _everything(r, tmp_path / "mlflow") == before

    # The archive holds mallory: it cannot be restored as the tenant bank is.
    refused(archive, r"holds tenants \['mallory'\], not \['bank'\]", tenant_id="bank")
    payload = _raw_dump(r, keys.tenant_meta("mallory"))
    for n, foreign in enumerate([keys.tenant_meta("bank"), keys.tenant_api_keys("bank"),
                                 keys.api_key_index(), keys.tenants_set(), "pp:{mallory}x"]):
        folder = _unpack(archive, tmp_path / f"foreign-{n}")
        _add_records(folder, "mallory", [{"key": foreign, "expire_at_ms": 0, "dump": payload}])
        refused(_repack(folder, tmp_path / f"foreign-{n}.tar.gz", key), "not one of its keys")
    # An API key mapped to another tenant, and another tenant's own key claimed as mallory's.
    for n, (digest, owner) in enumerate([(tenants.key_digest("ppk_x_" + "y" * 43), "bank"),
                                         (tenants.key_digest(bank_key), "mallory")]):
        folder = _unpack(archive, tmp_path / f"apikey-{n}")
        _map_api_key(folder, "mallory", digest, owner)
        refused(_repack(folder, tmp_path / f"apikey-{n}.tar.gz", key),
                "restore maps API keys only to the tenant restored|belong to another tenant")
    # A model folder outside the tenant's own: its pickles are never imported.
    folder = _unpack(archive, tmp_path / "outside")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["tenants"][0]["models"][0]["versions"][0]["model_dir"] = "tenants/../.."
    (folder / "manifest.json").write_text(json.dumps(manifest))
    refused(_repack(folder, tmp_path / "outside.tar.gz", key), "not under tenants/mallory/models/")

    # The untouched archive is the operator's and restores.
    report = restore(r, registry, archive, key=key, tenant_ids=["mallory"], is_replacing=True)
    assert report.tenants == {"mallory": "mallory"} and report.model_versions == 2
    assert tenants.authenticate(r, bank_key).tenant_id == "bank"
    assert registry.champion_version("mallory") == 1
    bank_after = {k: v for k, v in _everything(r).items() if "{bank}" in k}
    assert bank_after == {k: v for k, v in before.items() if "{bank}" in k}


def test_a_tenant_named_is_restored_alone_from_a_two_tenant_archive(
    r: redis.Redis, tmp_path: Path, key: BackupKey
) -> None:
    registry = _registry(tmp_path / "mlflow")
    for tenant_id in ("alpha", "beta"):
        _seed_tenant(r, registry, tenant_id, has_models=False)
    archive = tmp_path / "both.tar.gz"
    backup(r, registry, ["alpha", "beta"], archive, key=key)
    r.flushall()

    report = restore(r, registry, archive, key=key, tenant_ids=["beta"])

    assert report.tenants == {"beta": "beta"}
    assert tenants.list_tenants(r) == ["beta"]
    assert not list(r.scan_iter(match=keys.tenant_pattern("alpha")))


def test_a_backup_key_is_created_0600_and_a_readable_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state" / "backup.key"
    made, is_new = load_or_create_key(path)
    assert is_new and stat.S_IMODE(path.stat().st_mode) == 0o600
    again, is_new = load_or_create_key(path)
    assert not is_new and again.key_id == made.key_id
    assert made.key_id not in path.read_text() and path.read_text().strip() not in repr(made)
    path.chmod(0o644)
    with pytest.raises(BackupError, match="readable by others.*chmod 600"):
        BackupKey.load(path)
    with pytest.raises(BackupError, match="no backup key at"):
        BackupKey.load(tmp_path / "missing.key")


def _cli(data_dir: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PUSHPILOT_DATA_DIR": str(data_dir)}
    env.pop("PUSHPILOT_REDIS_URL", None)
    env.pop("PUSHPILOT_BACKUP_KEY_FILE", None)
    return subprocess.run([PUSHPILOT, *args], capture_output=True, text=True, env=env,
                          timeout=180, check=False, cwd=cwd)


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
        done = _cli(data_dir, "restore", "--in", str(one), "--tenant", "alpha", "--as", "gamma")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout.splitlines()[-1])["model_versions"] == 1
        assert r.xlen(keys.outbox_stream("gamma", "marketing")) == 1
        assert registry.champion_version("gamma") == 1

        broken = tmp_path / "broken.tar.gz"
        broken.write_bytes(one.read_bytes()[:100])
        failed = _cli(data_dir, "restore", "--in", str(broken), "--tenant", "alpha",
                      "--as", "delta")
        assert failed.returncode == 2 and "error:" in failed.stderr
        assert not tenants.tenant_exists(r, "delta")
        r.close()


@pytest.mark.slow
def test_backup_out_may_be_relative_and_the_cli_refuses_an_unsigned_archive(tmp_path: Path) -> None:
    data_dir, work = tmp_path / "data", tmp_path / "work"
    work.mkdir()
    with EmbeddedRedis(data_dir) as server:
        r = connect(server.url)
        tenants.create_tenant(r, "alpha")
        enqueue(r, [Push("alpha", "p1", "u1")], is_transactional_fsynced=False)
        # With a model, since its artifacts are what a relative --out broke.
        registry = _registry(data_dir)
        registry.log_model("alpha", "propensity", LogisticRegression().fit(X, Y), X_example=X,
                           metrics={"roc_auc": 0.8}, params={})

        made = _cli(data_dir, "backup", "--tenant", "alpha", "--out", "out/alpha.tar.gz", cwd=work)

        assert made.returncode == 0, made.stderr
        assert json.loads(made.stdout.splitlines()[-1])["archive"] == str(work / "out" / "alpha.tar.gz")
        assert stat.S_IMODE((data_dir / "backup.key").stat().st_mode) == 0o600
        assert "created the backup key" in made.stderr

        folder = _unpack(work / "out" / "alpha.tar.gz", tmp_path / "crafted")
        _add_records(folder, "alpha", [{"key": keys.tenant_meta("beta"), "expire_at_ms": 0,
                                        "dump": _raw_dump(r, keys.tenant_meta("alpha"))}])
        _repack(folder, work / "crafted.tar.gz", None)
        before = _everything(r)
        failed = _cli(data_dir, "restore", "--in", "crafted.tar.gz", "--tenant", "alpha",
                      "--as", "gamma", cwd=work)
        assert failed.returncode == 2 and "error: archive" in failed.stderr
        assert "not signed" in failed.stderr
        assert _everything(r) == before

        done = _cli(data_dir, "restore", "--in", "out/alpha.tar.gz", "--tenant", "alpha",
                    "--as", "gamma", cwd=work)
        assert done.returncode == 0, done.stderr
        assert r.xlen(keys.outbox_stream("gamma", "marketing")) == 1
        assert registry.champion_version("gamma") == 1
        r.close()
