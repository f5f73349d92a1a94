"""Run a campaign on Ray: partitions of the audience go through features, privacy, guard, score
(Ray tasks), one global selection, then dispatch tasks enqueue the pushes in pipelined batches.

A run is idempotent: push ids are fixed by (campaign, run, user), so re-running a run, or a
partition that crashed, never sends a user twice. Finished dispatch partitions are recorded in
the run's hash and skipped on a re-run.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
import ray
import redis
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from models.registry import ModelRegistry
from pipeline import keys, outbox
from pipeline.atrest import sealer_for
from pipeline.campaigns.assignment import HOLDOUT, assign_arms
from pipeline.campaigns.spec import CampaignSpec, Filter, template_fields
from pipeline.consent import denied_users, scope_refusers
from pipeline.errors import InvalidInputError, NoModelError
from pipeline.features import FEATURE_COLUMNS
from pipeline.featurestore import load_feature_matrix
from pipeline.guard import quarantined_users
from pipeline.redis_server import connect
from pipeline.subjects import excluded_from_learning

__all__ = ["RunConfig", "RunResult", "run_campaign", "push_id_for", "default_run_id", "STAGES"]

log = logging.getLogger(__name__)

STAGES = ("features", "privacy", "guard", "score", "select", "enqueue")
_FETCH_CHUNK = 10_000
_ENQUEUE_BATCH = 5_000
# Values that look like an e-mail or a phone number never reach a message, whatever the field.
_LOOKS_PERSONAL = re.compile(r"@|\d[\d\s().-]{6,}\d")
Fault = Callable[[str, int, int], None]


@dataclass(frozen=True)
class RunConfig:
    """Where a run's tasks find Redis and MLflow; read once by the caller and passed down."""

    redis_url: str
    tracking_uri: str
    artifact_root: str
    partition_size: int = 125_000
    show_progress: bool = True
    # Settings.at_rest_key_path (None: pushes stored plain) and Settings.encrypt_at_rest.
    at_rest_key_file: str | None = None
    encrypt_at_rest: bool = True


@dataclass
class RunResult:
    tenant_id: str
    campaign_id: str
    run_id: str
    model_version: int
    counts: dict[str, Any]
    stage_seconds: dict[str, float]
    phase_seconds: dict[str, float]
    partitions: int
    nodes: list[str] = field(default_factory=list)


def default_run_id(now: float) -> str:
    return "manual-" + datetime.fromtimestamp(now, ZoneInfo("UTC")).strftime("%Y%m%dT%H%M%S")


push_id_for = outbox.campaign_push_id


# --- tasks ---------------------------------------------------------------------------------

_MODELS: dict[tuple[str, str, str, int], Any] = {}


def _champion(config: RunConfig, tenant_id: str, kind: str, version: int) -> Any:
    """The tenant's champion, loaded once per worker process and version."""
    cache_key = (config.tracking_uri, tenant_id, kind, version)
    if cache_key not in _MODELS:
        registry = ModelRegistry(config.tracking_uri, Path(config.artifact_root))
        model, loaded = registry.load_champion(tenant_id, kind)
        if loaded != version:
            raise RuntimeError(
                f"the {kind} champion of tenant {tenant_id!r} changed from v{version} to "
                f"v{loaded} during the run; re-run it to score every user with one model"
            )
        _MODELS[cache_key] = model
    return _MODELS[cache_key]


def _load_matrix(r: redis.Redis, tenant_id: str, user_ids: Sequence[str]) -> np.ndarray:
    """The users' stored online features as a float matrix in FEATURE_COLUMNS order."""
    stored = load_feature_matrix(r, tenant_id, user_ids)
    missing = [c for c in FEATURE_COLUMNS if c not in stored.columns]
    if missing:
        raise InvalidInputError(
            "features", f"tenant {tenant_id!r} has no online feature {missing[0]!r}; refresh its "
            "features (pipeline.featurestore.store_features) before running a campaign")
    # A user without stored features keeps an all-NaN row, as load_feature_matrix gives it.
    order = [stored.columns.index(c) for c in FEATURE_COLUMNS]
    return stored.values[:, order]


def _load_attributes(r: redis.Redis, tenant_id: str, user_ids: Sequence[str],
                     names: Sequence[str]) -> pd.DataFrame:
    """The named safe attributes of each user's pseudonymised profile (missing: None)."""
    pipe = r.pipeline(transaction=False)
    for start in range(0, len(user_ids), _FETCH_CHUNK):
        pipe.hmget(keys.user_profiles(tenant_id), list(user_ids[start : start + _FETCH_CHUNK]))
    rows: list[dict[str, Any]] = []
    for part in pipe.execute():
        for raw in part:
            profile = json.loads(raw) if raw else {}
            rows.append({n: profile.get(n) for n in names})
    return pd.DataFrame(rows, index=pd.Index(user_ids, name="user_id"), columns=list(names))


def _filter_mask(filters: Sequence[Filter], features: np.ndarray,
                 attributes: pd.DataFrame | None) -> np.ndarray:
    mask = np.ones(len(features), dtype=bool)
    for f in filters:
        if f.feature is not None:
            column = features[:, FEATURE_COLUMNS.index(f.feature)]
        elif attributes is not None:
            column = attributes[str(f.attribute)].to_numpy(dtype=object)
        else:
            raise ValueError(f"filter on attribute {f.attribute!r} needs the users' attributes")
        value = f.value
        if f.op == "in":
            mask &= pd.Series(column).isin(list(value)).to_numpy()  # type: ignore[arg-type]
        elif f.op == "not_in":
            mask &= ~pd.Series(column).isin(list(value)).to_numpy()  # type: ignore[arg-type]
        elif f.op == "==":
            mask &= column == value
        elif f.op == "!=":
            mask &= column != value
        else:
            numeric = pd.to_numeric(pd.Series(column), errors="coerce").to_numpy(dtype=np.float64)
            compare = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal}
            with np.errstate(invalid="ignore"):
                mask &= compare[f.op](numeric, float(value))  # type: ignore[arg-type]
    return mask


def _privacy_gate(features: np.ndarray) -> np.ndarray:
    """Only numeric, pseudonymous features reach the model: the matrix holds nothing else by
    construction (fixed FEATURE_COLUMNS, floats), and infinities become missing values."""
    if features.dtype != np.float64:
        raise InvalidInputError("features", f"must be numeric, got {features.dtype}")
    return np.where(np.isfinite(features), features, np.nan)


def _score_partition(config: RunConfig, spec_json: str, index: int, user_ids: np.ndarray,
                     version: int, quarantined: frozenset[str],
                     refused: frozenset[str] = frozenset()) -> dict[str, Any]:
    spec = CampaignSpec.model_validate_json(spec_json)
    seconds: dict[str, float] = {}
    r = connect(config.redis_url)
    try:
        ids = user_ids.tolist()
        t = time.perf_counter()
        features = _load_matrix(r, spec.tenant, ids)
        attributes = (_load_attributes(r, spec.tenant, ids, spec.audience.attributes)
                      if spec.audience.attributes else None)
        seconds["features"] = time.perf_counter() - t

        t = time.perf_counter()
        features = _privacy_gate(features)
        in_audience = _filter_mask(spec.audience.filters, features, attributes)
        seconds["privacy"] = time.perf_counter() - t

        t = time.perf_counter()
        is_quarantined = (np.isin(user_ids, np.array(sorted(quarantined), dtype=user_ids.dtype))
                          if quarantined else np.zeros(len(ids), dtype=bool))
        # Consent: a user who took back profiling is never scored, one who took back
        # marketing is not picked for a marketing campaign (``pipeline.consent``).
        is_refused = (np.isin(user_ids, np.array(sorted(refused), dtype=user_ids.dtype))
                      & ~is_quarantined if refused else np.zeros(len(ids), dtype=bool))
        eligible = in_audience & ~is_quarantined & ~is_refused
        seconds["guard"] = time.perf_counter() - t

        t = time.perf_counter()
        model = _champion(config, spec.tenant, spec.selection.rank_by, version)
        positions = np.flatnonzero(eligible)
        frame = pd.DataFrame(features[positions], columns=list(FEATURE_COLUMNS))
        with threadpool_limits(1):
            if spec.selection.rank_by == "uplift":
                scores = np.asarray(model.predict(frame), dtype=np.float64)
            else:
                scores = np.asarray(model.predict_proba(frame)[:, 1], dtype=np.float64)
        seconds["score"] = time.perf_counter() - t
    finally:
        r.close()
    return {
        "index": index,
        "positions": positions.astype(np.int32),
        "scores": scores.astype(np.float32),
        "audience": int(in_audience.sum()),
        "quarantined": int((in_audience & is_quarantined).sum()),
        "consent": int((in_audience & is_refused).sum()),
        "seconds": seconds,
        "node": ray.get_runtime_context().get_node_id() if ray.is_initialized() else "",
    }


def _render(text: str, values: dict[str, Any]) -> str:
    return text.format_map(values) if "{" in text else text


def _dispatch_partition(config: RunConfig, spec_json: str, run_id: str, index: int,
                        user_ids: list[str], arms: list[str], now: float,
                        fault: Fault | None) -> dict[str, Any]:
    """Suppress (quiet hours, frequency cap, privacy), record arms, enqueue the variants' pushes."""
    spec = CampaignSpec.model_validate_json(spec_json)
    tenant_id = spec.tenant
    r = connect(config.redis_url)
    sealer = (None if config.at_rest_key_file is None
              else sealer_for(config.at_rest_key_file, seals=config.encrypt_at_rest))
    started = time.perf_counter()
    try:
        done = r.hget(keys.campaign_run(tenant_id, spec.id, run_id), f"part:{index}")
        if done is not None:  # a re-run: this partition finished before the crash
            before = json.loads(done)
            return {**before, "accepted": 0, "duplicates": before["accepted"] + before["duplicates"],
                    "enqueue_seconds": 0.0, "skipped": True}
        variants = {v.name: v for v in spec.variants}
        fields = sorted({f for v in spec.variants for f in template_fields(v.title)
                         + template_fields(v.body)})
        attr_names = sorted(set(spec.template_attributes)
                            | ({"timezone"} if spec.quiet_hours else set()))
        attributes = _load_attributes(r, tenant_id, user_ids, attr_names) if attr_names else None
        feature_fields = [f for f in fields if f in FEATURE_COLUMNS]
        features = (pd.DataFrame(_load_matrix(r, tenant_id, user_ids), columns=list(FEATURE_COLUMNS),
                                 index=user_ids)[feature_fields] if feature_fields else None)

        reasons: list[str] = [""] * len(user_ids)
        if spec.quiet_hours is not None and attributes is not None:
            hours = _local_hours(attributes["timezone"].tolist(), now)
            for i, hour in enumerate(hours):
                if spec.quiet_hours.is_quiet(hour):
                    reasons[i] = "quiet_hours"
        if spec.frequency_cap is not None:
            _frequency_capped(r, tenant_id, user_ids, attributes, now, spec.frequency_cap.per_day,
                              reasons)

        pushes: list[outbox.Push] = []
        final_arms: dict[str, str] = {}
        for i, (user_id, arm) in enumerate(zip(user_ids, arms, strict=True)):
            values: dict[str, Any] = {}
            if attributes is not None:
                values.update({k: attributes.iat[i, attributes.columns.get_loc(k)]
                               for k in spec.template_attributes})
            if not reasons[i] and any(isinstance(v, str) and _LOOKS_PERSONAL.search(v)
                                      for v in values.values()):
                reasons[i] = "privacy"
            if reasons[i]:
                final_arms[user_id] = f"!{reasons[i]}"
                continue
            final_arms[user_id] = arm
            if arm == HOLDOUT:
                continue
            if features is not None:
                values.update({k: _fmt(features.iat[i, features.columns.get_loc(k)])
                               for k in feature_fields})
            variant = variants[arm]
            values = {k: ("" if v is None else v) for k, v in values.items()}
            pushes.append(outbox.Push(
                tenant_id=tenant_id, push_id=push_id_for(spec.id, run_id, user_id),
                user_id=user_id, lane=spec.lane, channel=spec.channel,
                title=_render(variant.title, values), body=_render(variant.body, values),
                data={"campaign_id": spec.id, "run_id": run_id, "variant": arm},
                campaign_id=spec.id, enqueued_at=now, topic=spec.topic,
            ))
        # Arms first: a crash after them but before the pushes leaves nothing a re-run can't redo.
        arms_key = keys.campaign_arms(tenant_id, spec.id, run_id)
        pipe = r.pipeline(transaction=False)
        items = list(final_arms.items())
        for start in range(0, len(items), _FETCH_CHUNK):
            pipe.hset(arms_key, mapping=dict(items[start : start + _FETCH_CHUNK]))
        pipe.execute()

        accepted = duplicates = rejected = 0
        enqueue_seconds = 0.0
        for batch_no, start in enumerate(range(0, len(pushes), _ENQUEUE_BATCH)):
            t = time.perf_counter()
            result = outbox.enqueue(r, pushes[start : start + _ENQUEUE_BATCH], batch_size=2_000,
                                    sealer=sealer)
            enqueue_seconds += time.perf_counter() - t
            accepted += len(result.accepted)
            duplicates += len(result.duplicates)
            rejected += len(result.rejected)
            if fault is not None:
                fault("dispatch", index, batch_no)
        suppressed = Counter(r for r in reasons if r)
        counts = {
            "selected": len(user_ids),
            "held_out": sum(1 for a in final_arms.values() if a == HOLDOUT),
            "suppressed": dict(suppressed),
            "pushes": len(pushes),
            "accepted": accepted,
            "duplicates": duplicates,
            "rejected": rejected,
            "enqueue_seconds": enqueue_seconds,
            "dispatch_seconds": time.perf_counter() - started,
        }
        r.hset(keys.campaign_run(tenant_id, spec.id, run_id), f"part:{index}", json.dumps(counts))
        return {**counts, "skipped": False}
    finally:
        r.close()


def _fmt(value: float) -> str:
    return "" if np.isnan(value) else (str(int(value)) if float(value).is_integer() else f"{value:.2f}")


_ZONES: dict[str, ZoneInfo] = {}


def _local_hours(zone_names: Sequence[Any], now: float) -> list[int]:
    out = []
    for name in zone_names:
        key = str(name or "UTC")
        if key not in _ZONES:
            try:
                _ZONES[key] = ZoneInfo(key)
            except (ZoneInfoNotFoundError, ValueError):
                _ZONES[key] = ZoneInfo("UTC")
        out.append(datetime.fromtimestamp(now, _ZONES[key]).hour)
    return out


def _frequency_capped(r: redis.Redis, tenant_id: str, user_ids: Sequence[str],
                      attributes: pd.DataFrame | None, now: float, per_day: int,
                      reasons: list[str]) -> None:
    """Marks users who already got ``per_day`` marketing pushes today (their local day)."""
    zones = (attributes["timezone"].tolist() if attributes is not None and "timezone" in attributes
             else ["UTC"] * len(user_ids))
    pipe = r.pipeline(transaction=False)
    for user_id, zone in zip(user_ids, zones, strict=True):
        _local_hours([zone], now)
        day = datetime.fromtimestamp(now, _ZONES[str(zone or "UTC")]).date().isoformat()
        pipe.hget(keys.user_frequency(tenant_id, user_id), f"d:{day}")
    for i, got in enumerate(pipe.execute()):
        if not reasons[i] and got is not None and int(got) >= per_day:
            reasons[i] = "frequency_cap"


_score_task = ray.remote(num_cpus=1)(_score_partition)
_dispatch_task = ray.remote(num_cpus=1)(_dispatch_partition)


# --- driver --------------------------------------------------------------------------------


def _select(spec: CampaignSpec, order_keys: np.ndarray, scores: np.ndarray,
            user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Selected positions (best first) and their arms: threshold, then top_k, then budget."""
    keep = np.flatnonzero(scores >= spec.selection.threshold) if spec.selection.threshold is not None \
        else np.arange(len(scores))
    # Best score first; ties go to the lower user id, so a re-run selects the same users.
    ranked = keep[np.lexsort((order_keys[keep], -scores[keep]))]
    if spec.selection.top_k is not None:
        ranked = ranked[: spec.selection.top_k]
    variants = [(v.name, v.weight) for v in spec.variants]
    if spec.selection.budget is None:
        return ranked, assign_arms(spec.id, user_ids[ranked].tolist(), spec.holdout_percent, variants)
    chosen: list[np.ndarray] = []
    chosen_arms: list[np.ndarray] = []
    sends, step = 0, max(1_000, int(spec.selection.budget * 1.5))
    for start in range(0, len(ranked), step):
        part = ranked[start : start + step]
        arms = assign_arms(spec.id, user_ids[part].tolist(), spec.holdout_percent, variants)
        cumulative = sends + np.cumsum(arms != HOLDOUT)
        if cumulative[-1] >= spec.selection.budget:
            cut = int(np.searchsorted(cumulative, spec.selection.budget)) + 1
            chosen.append(part[:cut])
            chosen_arms.append(arms[:cut])
            break
        chosen.append(part)
        chosen_arms.append(arms)
        sends = int(cumulative[-1])
    if not chosen:
        return ranked[:0], np.array([], dtype=object)
    return np.concatenate(chosen), np.concatenate(chosen_arms)


def run_campaign(
    r: redis.Redis,
    config: RunConfig,
    spec: CampaignSpec,
    run_id: str | None = None,
    *,
    now: float | None = None,
    fault: Fault | None = None,
) -> RunResult:
    """Run (or resume) one run of a campaign on the connected Ray; returns its counts.

    Ray must be initialised by the caller (a local Ray, or a cluster address). ``now`` is the
    send time used for quiet hours and frequency caps; ``fault`` is called after each enqueue
    batch (tests use it to crash a partition).
    """
    if not ray.is_initialized():
        raise RuntimeError("Ray is not initialised; call serving.app.start_ray(settings) first")
    now = time.time() if now is None else now
    run_id = run_id or default_run_id(now)
    tenant_id = spec.tenant
    wall = time.perf_counter()
    registry = ModelRegistry(config.tracking_uri, Path(config.artifact_root))
    version = registry.champion_version(tenant_id, spec.selection.rank_by)
    if version is None:
        raise NoModelError(tenant_id, spec.selection.rank_by)
    run_key = keys.campaign_run(tenant_id, spec.id, run_id)
    pipe = r.pipeline(transaction=True)
    pipe.hsetnx(run_key, "started_at", repr(now))
    pipe.hsetnx(run_key, "model_version", version)
    pipe.hset(run_key, mapping={"status": "running", "spec": spec.to_json()})
    pipe.zadd(keys.campaign_runs(tenant_id, spec.id), {run_id: now}, nx=True)
    pipe.execute()
    if int(r.hget(run_key, "model_version") or version) != version:
        raise InvalidInputError(
            "run_id", f"run {run_id!r} started with model v{r.hget(run_key, 'model_version')}, "
            f"the champion is now v{version}; start a new run instead of resuming this one")

    try:
        result = _execute(r, config, spec, run_id, version, now, fault)
    except BaseException as e:
        r.hset(run_key, mapping={"status": "failed", "error": f"{type(e).__name__}: {e}"[:500]})
        raise
    result.phase_seconds["total"] = time.perf_counter() - wall
    r.hset(run_key, mapping={"status": "done", "finished_at": repr(time.time()),
                             "counts": json.dumps(result.counts)})
    r.hdel(run_key, "error")
    return result


def _refused_marketing(r: redis.Redis, spec: CampaignSpec) -> set[str]:
    """Users who refused marketing, or marketing on the campaign's channel or topic."""
    scopes = [f"channel:{spec.channel}", *([f"topic:{spec.topic}"] if spec.topic else [])]
    return denied_users(r, spec.tenant, "marketing") | scope_refusers(r, spec.tenant, scopes)


def _execute(r: redis.Redis, config: RunConfig, spec: CampaignSpec, run_id: str, version: int,
             now: float, fault: Fault | None) -> RunResult:
    tenant_id = spec.tenant
    phase: dict[str, float] = {}
    t = time.perf_counter()
    user_ids = np.array(sorted(r.hkeys(keys.user_features(tenant_id))), dtype=str)
    if len(user_ids) == 0:
        raise InvalidInputError(
            "audience", f"tenant {tenant_id!r} has no users with online features; store them "
            "(pipeline.featurestore.store_features) before running a campaign")
    quarantined = frozenset(quarantined_users(r, tenant_id))
    refused = frozenset(excluded_from_learning(r, tenant_id, user_ids.tolist())
                        | (_refused_marketing(r, spec) if spec.lane == "marketing" else set()))
    n_parts = max(1, math.ceil(len(user_ids) / config.partition_size))
    bounds = np.linspace(0, len(user_ids), n_parts + 1).astype(int)
    spec_json = spec.to_json()
    quarantined_ref, refused_ref = ray.put(quarantined), ray.put(refused)
    phase["audience"] = time.perf_counter() - t

    t = time.perf_counter()
    pending = [
        _score_task.remote(config, spec_json, i, user_ids[bounds[i]:bounds[i + 1]], version,
                           quarantined_ref, refused_ref)
        for i in range(n_parts)
    ]
    scored: list[dict[str, Any]] = []
    with tqdm(total=len(user_ids), desc=f"{spec.id} score", unit="user",
              disable=not config.show_progress, leave=False) as bar:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            part = ray.get(ready[0])
            scored.append(part)
            bar.update(int(bounds[part["index"] + 1] - bounds[part["index"]]))
    scored.sort(key=lambda p: p["index"])
    phase["score"] = time.perf_counter() - t

    t = time.perf_counter()
    positions = np.concatenate([p["positions"].astype(np.int64) + bounds[p["index"]] for p in scored])
    scores = np.concatenate([p["scores"] for p in scored]).astype(np.float64)
    selected, arms = _select(spec, positions, scores, user_ids[positions])
    selected_positions = positions[selected]
    select_seconds = time.perf_counter() - t
    phase["select"] = select_seconds

    t = time.perf_counter()
    part_of = np.searchsorted(bounds, selected_positions, side="right") - 1
    jobs = []
    for i in range(n_parts):
        mine = np.flatnonzero(part_of == i)
        if len(mine) == 0:
            continue
        jobs.append(_dispatch_task.remote(
            config, spec_json, run_id, i, user_ids[selected_positions[mine]].tolist(),
            arms[mine].tolist(), now, fault))
    dispatched: list[dict[str, Any]] = []
    with tqdm(total=len(selected_positions), desc=f"{spec.id} send", unit="user",
              disable=not config.show_progress, leave=False) as bar:
        while jobs:
            ready, jobs = ray.wait(jobs, num_returns=1)
            part = ray.get(ready[0])
            dispatched.append(part)
            bar.update(part["selected"])
    phase["dispatch"] = time.perf_counter() - t

    stage_seconds = {s: sum(p["seconds"].get(s, 0.0) for p in scored)
                     for s in ("features", "privacy", "guard", "score")}
    stage_seconds["select"] = select_seconds
    stage_seconds["enqueue"] = sum(p.get("enqueue_seconds", 0.0) for p in dispatched)
    suppressed: Counter[str] = Counter()
    for p in dispatched:
        suppressed.update(p["suppressed"])
    quarantined_count = sum(p["quarantined"] for p in scored)
    if quarantined_count:
        suppressed["quarantined"] = quarantined_count
    refused_count = sum(p.get("consent", 0) for p in scored)
    if refused_count:
        suppressed["consent"] = refused_count
    audience = sum(p["audience"] for p in scored)
    counts = {
        "users": len(user_ids),
        "audience": audience,
        "eligible": audience - quarantined_count - refused_count,
        "scored": len(scores),
        "suppressed": dict(sorted(suppressed.items())),
        "selected": len(selected_positions),
        "held_out": sum(p["held_out"] for p in dispatched),
        "pushes": sum(p["pushes"] for p in dispatched),
        # Duplicates are this run's pushes accepted by an earlier, crashed attempt.
        "sent": sum(p["accepted"] + p["duplicates"] for p in dispatched),
        "accepted_now": sum(p["accepted"] for p in dispatched),
        "duplicates": sum(p["duplicates"] for p in dispatched),
        "rejected": sum(p["rejected"] for p in dispatched),
        "partitions_skipped": sum(1 for p in dispatched if p.get("skipped")),
    }
    return RunResult(tenant_id, spec.id, run_id, version, counts, stage_seconds, phase, n_parts,
                     sorted({p["node"] for p in scored if p["node"]}))
