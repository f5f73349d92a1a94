"""Canary personal data planted in profiles and notes must reach no store, model or log."""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis

from models.registry import ModelRegistry
from pipeline import keys, outbox, tenants
from pipeline.config import Settings
from pipeline.delivery import DeliveryWorker
from pipeline.featurestore import load_features, load_profile
from pipeline.generator import generate_tenant, read_events, read_profiles, write_tenant
from pipeline.privacy import (
    PrivacyPolicy,
    anonymize_table,
    pseudonymize,
    recent_audits,
    save_policy,
)
from pipeline.redis_server import EmbeddedRedis, connect
from pipeline.targeting import select_top_k
from serving.demo import prepare_tenant

pytestmark = pytest.mark.slow

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CANARY_ROWS = 4


def _resident_id(first17: str) -> str:
    return first17 + "10X98765432"[sum(int(d) * w for d, w in zip(first17, _WEIGHTS, strict=True)) % 11]


def _canaries(rng: np.random.Generator) -> list[dict[str, str]]:
    """Values no other data holds: e-mails, US and CN phones, resident IDs and names."""
    rows = []
    for i in range(_CANARY_ROWS):
        tag = secrets.token_hex(4)
        us = f"{rng.integers(200, 999)}-{rng.integers(1000, 9999)}"
        cn = f"{rng.integers(10_000_000, 99_999_999)}"
        rows.append({
            "email": f"canary.{tag}@canary-{i}.example.com",
            "us_phone": f"(312) {us}",
            "us_digits": f"312{us.replace('-', '')}",
            "cn_phone": f"137{cn}",
            "cn_spaced": f"+86 137 {cn[:4]} {cn[4:]}",
            "resident_id": _resident_id(f"110105198{rng.integers(0, 9)}0612{rng.integers(100, 999)}"),
            "name": f"Quillon{tag.upper()} Zephyrine",
        })
    return rows


def _plant(profiles: pd.DataFrame, canaries: list[dict[str, str]]) -> pd.DataFrame:
    out = profiles.copy()
    out["id_number"] = pd.array([None] * len(out), dtype="str")
    for i, c in enumerate(canaries):
        out.loc[i, "name"] = c["name"]
        out.loc[i, "email"] = c["email"]
        out.loc[i, "phone"] = c["cn_spaced"] if i % 2 else c["us_phone"]
        out.loc[i, "id_number"] = c["resident_id"]
        out.loc[i, "notes"] = (
            f"客户{c['name']}的身份证号{c['resident_id']}，手机{c['cn_phone']}，邮箱{c['email']}。"
            if i % 2
            else f"{c['name']} asked us to call {c['us_phone']} or {c['cn_phone']}, "
            f"ID {c['resident_id']}, mail {c['email']}."
        )
    return out


def _needles(canaries: list[dict[str, str]]) -> list[str]:
    return [c[k] for c in canaries for k in ("email", "us_phone", "us_digits", "cn_phone",
                                             "resident_id", "name")] + [
        c["cn_spaced"] for c in canaries] + [c["name"].split()[0] for c in canaries]


def _file_corpus(root: Path) -> list[tuple[str, bytes]]:
    return [(str(p), p.read_bytes()) for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


@pytest.fixture
def own_stores(tmp_path: Path) -> Iterator[tuple[Settings, EmbeddedRedis, redis.Redis, ModelRegistry]]:
    """A Valkey and an MLflow store of this test's own.

    The canaries are fresh random values, so no other test's data can hold them; searching only
    what this run wrote is the same check, without reading everything the session wrote before.
    """
    settings = Settings(data_dir=tmp_path / "data")
    settings.data_dir.mkdir()
    with EmbeddedRedis(settings.data_dir) as server:
        client = connect(server.url)
        try:
            yield settings, server, client, ModelRegistry(
                settings.mlflow_tracking_uri, Path(settings.mlflow_artifact_root))
        finally:
            client.close()


def test_canaries_reach_no_redis_key_model_mlflow_store_or_log(
    own_stores: tuple[Settings, EmbeddedRedis, redis.Redis, ModelRegistry], new_tenant_id,
    tmp_path: Path, caplog: pytest.LogCaptureFixture, redis_corpus,
) -> None:
    settings, redis_server, redis_client, registry = own_stores
    caplog.set_level(logging.DEBUG)
    tenant, other = new_tenant_id("canary"), new_tenant_id("canary-b")
    tenants.create_tenant(redis_client, tenant)
    tenants.create_tenant(redis_client, other)
    save_policy(redis_client, tenant, PrivacyPolicy({**PrivacyPolicy.default().operators, "AGE": "drop"}))
    canaries = _canaries(np.random.default_rng())

    # Ingest: the tenant hands us files; they are read the way every path reads them.
    generated = generate_tenant(tenant, users=300, days=14, seed=17)
    raw_dir = tmp_path / "upload"
    write_tenant(dataclasses.replace(generated, profiles=_plant(generated.profiles, canaries)), raw_dir)
    data = dataclasses.replace(
        generated,
        profiles=read_profiles(raw_dir / "profiles.csv"),
        events=read_events(raw_dir / "events.csv"),
    )
    assert data.profiles["email"].str.contains("canary").sum() == _CANARY_ROWS

    # Privacy, guard, features, training (MLflow), online features and profiles (Redis).
    report = prepare_tenant(redis_client, registry, data)
    assert report["pii_values_pseudonymised"] > 0

    # Score with the champion and deliver a campaign through the outbox and a worker.
    model, _ = registry.load_champion(tenant)
    user_ids = data.profiles["user_id"].astype(str).tolist()
    features = load_features(redis_client, tenant, user_ids)
    scores = pd.Series(model.predict_proba(features)[:, 1], index=features.index)
    chosen = list(dict.fromkeys([*user_ids[:_CANARY_ROWS], *select_top_k(scores, 20).index]))
    outbox.enqueue(redis_client, [
        outbox.Push(tenant_id=tenant, push_id=outbox.make_push_id("canary", uid), user_id=uid,
                    title="Picked for you", body="Something new", campaign_id="canary")
        for uid in chosen
    ])
    worker = DeliveryWorker(redis_client, [tenant], consumer="canary-worker")
    delivered = 0
    while (n := worker.deliver_once()) > 0:
        delivered += n
    assert delivered == len(chosen)
    assert redis_client.xlen(keys.inbox_stream(tenant, user_ids[0])) == 1

    # The stored policy applied, and the run's audit holds counts only.
    stored = load_profile(redis_client, tenant, user_ids[0])
    assert stored is not None and "age" not in stored and "name" not in stored
    audit = recent_audits(redis_client, tenant, 1)[0]
    assert audit["source"] == "prepare_tenant"
    assert audit["counts"]["id_number"] == {"CN_RESIDENT_ID": _CANARY_ROWS}
    assert audit["counts"]["notes"]["CN_RESIDENT_ID"] == _CANARY_ROWS

    corpus = redis_corpus(redis_server.url) + _file_corpus(settings.data_dir)
    corpus.append(("log records", caplog.text.encode()))
    assert any(name.endswith("mlflow.db") for name, _ in corpus)
    assert any("mlartifacts" in name for name, _ in corpus)
    assert any(name.endswith(".aof") or "appendonly" in name for name, _ in corpus)
    leaks = [
        (needle, name)
        for needle in _needles(canaries)
        for name, blob in corpus
        if needle.encode() in blob or needle.encode("utf-16-le") in blob
    ]
    assert not leaks, f"canaries found: {leaks[:5]}"

    # Pseudonyms: the same in every place within the tenant, different in another tenant.
    secret, other_secret = (tenants.tenant_secret(redis_client, t) for t in (tenant, other))
    emails = data.profiles["email"].head(_CANARY_ROWS)
    mine = pseudonymize(emails, secret, "EMAIL_ADDRESS").tolist()
    for i, uid in enumerate(user_ids[:_CANARY_ROWS]):
        profile = load_profile(redis_client, tenant, uid)
        assert profile is not None
        assert profile["email"] == mine[i]
        assert mine[i] in profile["notes"]
    again, _ = anonymize_table(data.profiles, secret, columns={"notes": None})
    theirs, _ = anonymize_table(data.profiles, other_secret, columns={"notes": None})
    assert again["email"].head(_CANARY_ROWS).tolist() == mine
    assert not set(theirs["email"]) & set(again["email"])
    assert not set(theirs["phone"]) & set(again["phone"])
