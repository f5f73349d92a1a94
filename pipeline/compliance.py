"""A tenant's compliance report: what is held, how long it is kept, consent and erasures.

Read-only, counts only (never a user id), for a regular audit (`pushpilot compliance report`).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict
from typing import Any

import redis

from pipeline import consent, keys, retention
from pipeline.events import DEDUPE_WINDOW_SECONDS, EVENTS_MAX_LEN
from pipeline.onlinefeatures import HISTORY_MAX_EVENTS
from pipeline.receipts import DEFAULT_RETENTION_SECONDS
from pipeline.subjects import REMAINS, erasure_count

__all__ = ["compliance_report"]

_SCAN = 1000


def _count(r: redis.Redis, pattern: str) -> int:
    return sum(1 for _ in r.scan_iter(match=pattern, count=_SCAN))


def _policy_versions(r: redis.Redis, tenant_id: str) -> tuple[int, Counter[str]]:
    """Users with a ledger, and the policy version of each user's latest change."""
    ledgers = list(r.scan_iter(match=keys.consent_ledger(tenant_id, "*"), count=_SCAN))
    versions: Counter[str] = Counter()
    for start in range(0, len(ledgers), _SCAN):
        pipe = r.pipeline(transaction=False)
        for key in ledgers[start : start + _SCAN]:
            pipe.xrevrange(key, count=1)
        for last in pipe.execute():
            if last:
                versions[last[0][1].get("policy_version", "")] += 1
    return len(ledgers), versions


def compliance_report(r: redis.Redis, tenant_id: str, *, inbox_max_len: int,
                      receipt_retention_seconds: int = DEFAULT_RETENTION_SECONDS) -> dict[str, Any]:
    """Data held, retention, consent coverage, data-subject requests and policy versions."""
    policy = retention.get_policy(r, tenant_id)
    pipe = r.pipeline(transaction=False)
    for key in (keys.user_features(tenant_id), keys.user_profiles(tenant_id), keys.send_hours(tenant_id),
                keys.quarantine(tenant_id), *(keys.consent_denied(tenant_id, p) for p in consent.PURPOSES)):
        pipe.hlen(key)
    pipe.xlen(keys.events_stream(tenant_id))
    pipe.hget(keys.status_counts(tenant_id), "queued")
    features, profiles, hours, quarantined, *denied, events, pushes = pipe.execute()
    with_ledger, versions = _policy_versions(r, tenant_id)
    scoped: Counter[str] = Counter(field.rpartition("/")[2] for field, _ in r.hscan_iter(
        keys.consent_denied_scoped(tenant_id), count=_SCAN))
    requests: Counter[str] = Counter()
    for entry in r.xrange(keys.privacy_audit(tenant_id)):
        source = entry[1].get("source", "")
        for kind in ("export", "erase"):
            if source.startswith(f"{kind} by "):
                requests[kind] += 1
    return {
        "tenant_id": tenant_id,
        "generated_at": time.time(),
        "data_held": {
            "users_with_features": int(features),
            "profiles (pseudonymised)": int(profiles),
            "send_hours": int(hours),
            "event_histories": _count(r, keys.user_history(tenant_id, "*")),
            "events_in_stream": int(events),
            "inboxes": _count(r, keys.inbox_stream(tenant_id, "*")),
            "pushes_enqueued_ever": int(pushes or 0),
            "quarantined_users": int(quarantined),
        },
        "retention": {
            "policy_days": asdict(policy),
            "last_sweep": retention.last_sweep(r, tenant_id),
            "receipts_seconds_at_most": int(receipt_retention_seconds),
            "inbox_entries_per_user": int(inbox_max_len),
            "events_in_stream_max": EVENTS_MAX_LEN,
            "events_per_user_history_max": HISTORY_MAX_EVENTS,
            "event_ids_for_deduplication_seconds": DEDUPE_WINDOW_SECONDS,
            "consent_ledger": "kept: the proof of what each user agreed to",
            "note": "ages apply when `pushpilot compliance sweep` runs; the count limits and "
                    "the receipts' TTL always apply",
        },
        "consent": {
            "users_with_a_ledger": with_ledger,
            "share_of_users_with_features": round(with_ledger / features, 4) if features else None,
            "denied_or_revoked": dict(zip(consent.PURPOSES, (int(n) for n in denied), strict=True)),
            "topics": {t.name: {"kind": t.kind, "refused_by": scoped[f"topic:{t.name}"]}
                       for t in consent.list_topics(r, tenant_id)},
            "channels_refused_by": {c: scoped[f"channel:{c}"] for c in consent.CHANNELS},
            "latest_policy_version": dict(sorted(versions.items())),
        },
        "data_subject_requests": {
            "counted_over": "the privacy audit's retained entries (the latest 1000 runs)",
            "exports": requests["export"],
            "erasures_recorded": requests["erase"],
            "users_erased": erasure_count(r, tenant_id),
            "what_erasure_leaves": list(REMAINS),
        },
    }
