"""Campaign runs end to end: real Valkey, real Ray (the session's), real MLflow."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
import ray
import redis

from models.registry import ModelRegistry
from pipeline import keys, tenants
from pipeline.atrest import Sealer
from pipeline.campaigns import parse_spec, save_campaign
from pipeline.campaigns.report import run_report
from pipeline.campaigns.runner import RunConfig, run_campaign
from pipeline.config import Settings
from pipeline.consent import create_topic, record_consent
from pipeline.features import FEATURE_COLUMNS, build_features
from pipeline.featurestore import store_features, store_profiles
from pipeline.generator import generate_tenant
from pipeline.guard import quarantine_users
from pipeline.outbox import entry_content
from pipeline.redis_server import EmbeddedRedis
from pipeline.training import train_propensity

pytestmark = pytest.mark.slow

NOW = pd.Timestamp("2025-04-01 12:00", tz="UTC").timestamp()


def prepare(r: redis.Redis, registry: ModelRegistry, tenant_id: str, users: int = 2000,
            seed: int = 3) -> pd.DataFrame:
    """A generated tenant with online features, safe profiles and a champion model."""
    tenants.create_tenant(r, tenant_id)
    data = generate_tenant(tenant_id, users=users, days=21, seed=seed)
    train_propensity(tenant_id, data.events, cutoff=data.cutoff, horizon_days=data.horizon_days,
                     registry=registry)
    ids = pd.Index(data.profiles["user_id"].astype(str), name="user_id")
    features = build_features(data.events, data.cutoff, users=ids)[list(FEATURE_COLUMNS)]
    store_features(r, tenant_id, features)
    store_profiles(r, tenant_id, data.profiles[["user_id", "country", "timezone"]])
    return features


def spec_text(tenant_id: str, campaign_id: str = "spring", **extra: str) -> str:
    lines = [
        f"tenant: {tenant_id}",
        f"id: {campaign_id}",
        "variants:",
        "  - {name: a, title: 'Hello', body: 'New in {country}', weight: 1}",
        "  - {name: b, title: 'Hi', body: 'Back after {days_since_last_event} days?', weight: 1}",
        "holdout_percent: " + extra.pop("holdout", "20"),
        "selection: " + extra.pop("selection", "{top_k: 800}"),
    ]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def config(settings: Settings, redis_server: EmbeddedRedis, ray_session: None) -> RunConfig:
    return RunConfig(redis_url=redis_server.url, tracking_uri=settings.mlflow_tracking_uri,
                     artifact_root=str(settings.mlflow_artifact_root), partition_size=500,
                     show_progress=False)


def outbox_users(r: redis.Redis, tenant_id: str, campaign_id: str,
                 sealer: Sealer | None = None) -> Counter[str]:
    """How many pushes of the campaign each user has queued (``sealer`` opens encrypted ones)."""
    entries = [f for _, f in r.xrange(keys.outbox_stream(tenant_id, "marketing"))]
    if sealer is not None:
        entries = [sealer.open_fields(r, tenant_id, f) for f in entries]
    pushes = [entry_content(f) for f in entries]
    return Counter(p["user_id"] for p in pushes if p["campaign_id"] == campaign_id)


def test_a_run_selects_scores_holds_out_and_sends_each_user_once(
    redis_client: redis.Redis, registry: ModelRegistry, config: RunConfig,
    new_tenant_id: Callable[[str], str],
) -> None:
    tenant_id = new_tenant_id("camp")
    prepare(redis_client, registry, tenant_id)
    quarantine_users(redis_client, tenant_id, ["u000001", "u000002"], reason="test")
    spec = parse_spec(spec_text(tenant_id))
    save_campaign(redis_client, spec)

    result = run_campaign(redis_client, config, spec, "r1", now=NOW)

    c = result.counts
    assert c["users"] == 2000 and c["eligible"] == 1998
    assert c["suppressed"] == {"quarantined": 2}
    assert c["selected"] == 800
    assert 100 < c["held_out"] < 220
    assert c["sent"] == c["pushes"] == 800 - c["held_out"]
    sent = outbox_users(redis_client, tenant_id, "spring")
    assert len(sent) == c["sent"] and set(sent.values()) == {1}
    assert "u000001" not in sent
    bodies = [entry_content(f)["body"]
              for _, f in redis_client.xrange(keys.outbox_stream(tenant_id, "marketing"))]
    assert any(b.startswith("New in ") and "{" not in b for b in bodies)
    report = run_report(redis_client, tenant_id, "spring", "r1", converted=[])
    assert report["sent"] == c["sent"] and report["held_out"] == c["held_out"]
    assert set(report["lift"]["variants"]) == {"a", "b"}


def test_users_who_took_back_marketing_or_profiling_are_neither_scored_nor_picked(
    redis_client: redis.Redis, registry: ModelRegistry, config: RunConfig,
    new_tenant_id: Callable[[str], str],
) -> None:
    tenant_id = new_tenant_id("camp-consent")
    prepare(redis_client, registry, tenant_id)
    record_consent(redis_client, tenant_id, "u000003", {"marketing": "revoked"}, source="test",
                   policy_version="v1")
    record_consent(redis_client, tenant_id, "u000004", {"profiling": "denied"}, source="test",
                   policy_version="v1")
    # Below the purposes: the campaign's topic, its channel; another topic does not count.
    for topic in ("spring-sale", "news"):
        create_topic(redis_client, tenant_id, topic)
    for user, scope in (("u000005", "topic:spring-sale"), ("u000006", "channel:inbox"),
                        ("u000007", "topic:news")):
        record_consent(redis_client, tenant_id, user, {scope: "denied"}, source="test", policy_version="v1")
    quarantine_users(redis_client, tenant_id, ["u000001"], reason="test")
    spec = parse_spec(spec_text(tenant_id, selection="{top_k: 2000}")).model_copy(update={"topic": "spring-sale"})
    save_campaign(redis_client, spec)

    result = run_campaign(redis_client, config, spec, "r1", now=NOW)

    c = result.counts
    assert c["suppressed"] == {"quarantined": 1, "consent": 4}
    assert c["eligible"] == c["selected"] == 1995
    sent = outbox_users(redis_client, tenant_id, "spring")
    assert not {"u000001", "u000003", "u000004", "u000005", "u000006"} & set(sent)
    assert {f.get("topic") for _, f in redis_client.xrange(keys.outbox_stream(tenant_id, "marketing"))} == {
        "spring-sale"}
    arms = redis_client.hgetall(keys.campaign_arms(tenant_id, "spring", "r1"))
    assert not {"u000003", "u000004", "u000005", "u000006"} & set(arms) and "u000007" in arms


def test_a_crashed_run_rerun_sends_every_selected_user_exactly_once(
    redis_client: redis.Redis, registry: ModelRegistry, config: RunConfig,
    new_tenant_id: Callable[[str], str],
) -> None:
    tenant_id = new_tenant_id("crash")
    prepare(redis_client, registry, tenant_id)
    spec = parse_spec(spec_text(tenant_id, selection="{threshold: 0.0}", holdout="10"))

    def crash(stage: str, partition: int, batch: int) -> None:
        if partition == 1:
            raise RuntimeError("injected crash in partition 1")

    with pytest.raises(ray.exceptions.RayTaskError, match="injected crash"):
        run_campaign(redis_client, config, spec, "r1", now=NOW, fault=crash)
    assert redis_client.hget(keys.campaign_run(tenant_id, "spring", "r1"), "status") == "failed"
    before = outbox_users(redis_client, tenant_id, "spring")
    assert 0 < sum(before.values())

    result = run_campaign(redis_client, config, spec, "r1", now=NOW)
    again = run_campaign(redis_client, config, spec, "r1", now=NOW)

    sent = outbox_users(redis_client, tenant_id, "spring")
    arms = redis_client.hgetall(keys.campaign_arms(tenant_id, "spring", "r1"))
    treated = {u for u, arm in arms.items() if arm in ("a", "b")}
    assert set(sent) == treated and set(sent.values()) == {1}
    assert result.counts["sent"] == len(treated) == again.counts["sent"]
    assert again.counts["accepted_now"] == 0


def test_a_campaign_of_one_tenant_never_touches_another_tenants_keys(
    redis_client: redis.Redis, registry: ModelRegistry, config: RunConfig,
    new_tenant_id: Callable[[str], str],
) -> None:
    tenant_a, tenant_b = new_tenant_id("iso-a"), new_tenant_id("iso-b")
    prepare(redis_client, registry, tenant_a, users=600, seed=5)
    prepare(redis_client, registry, tenant_b, users=600, seed=6)

    def snapshot(tenant_id: str) -> dict[str, bytes]:
        names = sorted(redis_client.scan_iter(match=keys.tenant_pattern(tenant_id), count=1000))
        return {n: redis_client.dump(n) for n in names}

    before = snapshot(tenant_b)
    spec = parse_spec(spec_text(tenant_a, selection="{top_k: 300}"))
    save_campaign(redis_client, spec)
    run_campaign(redis_client, config, spec, "r1", now=NOW)
    assert snapshot(tenant_b) == before
    assert outbox_users(redis_client, tenant_b, "spring") == Counter()
    assert sum(outbox_users(redis_client, tenant_a, "spring").values()) > 0


def test_the_reported_lift_on_a_scenario_with_known_truth_is_within_its_interval(
    redis_client: redis.Redis, registry: ModelRegistry, config: RunConfig,
    new_tenant_id: Callable[[str], str],
) -> None:
    from pipeline.scenarios import randomised_campaign

    tenant_id = new_tenant_id("lift")
    scenario = randomised_campaign(tenant_id, users=3000, seed=9, days=21)
    data = generate_tenant(tenant_id, users=3000, days=21, seed=9)
    tenants.create_tenant(redis_client, tenant_id)
    train_propensity(tenant_id, data.events, cutoff=data.cutoff, horizon_days=data.horizon_days,
                     registry=registry)
    store_features(redis_client, tenant_id,
                   scenario.log.set_index("user_id")[list(FEATURE_COLUMNS)])
    spec = parse_spec(spec_text(tenant_id, holdout="50", selection="{threshold: 0.0}")
                      .replace("  - {name: b, title: 'Hi', body: 'Back after {days_since_last_event} days?', weight: 1}\n", "")
                      .replace("'New in {country}'", "'New for you'"))
    save_campaign(redis_client, spec)
    run_campaign(redis_client, config, spec, "r1", now=NOW)

    # The world answers: each user converts with the truth's probability for the arm they got.
    arms = redis_client.hgetall(keys.campaign_arms(tenant_id, "spring", "r1"))
    # Sorted: a Redis hash's order follows the server's per-start hash seed, and the draws
    # below must not depend on it.
    truth = scenario.truth.set_index("user_id").loc[sorted(arms)]
    is_treated = np.array([arms[u] == "a" for u in truth.index])
    p = np.where(is_treated, truth["p_treated"], truth["p_control"])
    converted = truth.index[np.random.default_rng(1).random(len(truth)) < p]

    report = run_report(redis_client, tenant_id, "spring", "r1", converted=list(converted))
    lift = report["lift"]["variants"]["a"]
    true_lift = float(truth["true_uplift"].mean())
    assert lift["holdout_n"] > 1200 and lift["n"] > 1200
    assert lift["ci_low"] <= true_lift <= lift["ci_high"]
    assert lift["ci_high"] - lift["ci_low"] < 0.08
    assert report["converted"] == len(converted)
