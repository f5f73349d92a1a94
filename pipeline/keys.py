"""Every Redis key pushpilot uses is named here, and nowhere else.

Tenant keys are ``pp:{<tenant_id>}:<kind>[:<rest>]``. The braces are a Redis Cluster hash tag,
so one tenant's keys share a slot and a Lua script may touch several of them. Global keys are
``pp:global:<kind>``.
"""

from __future__ import annotations

import functools
import re

__all__ = [
    "TENANT_ID_PATTERN",
    "validate_tenant_id",
    "tenant_prefix",
    "tenant_pattern",
    "tenants_set",
    "api_key_index",
    "tenant_meta",
    "tenant_api_keys",
    "tenant_secret",
    "outbox_stream",
    "push_status",
    "push_status_prefix",
    "push_retry",
    "status_counts",
    "dead_letter_stream",
    "inbox_stream",
    "inbox_stream_prefix",
    "inbox_channel",
    "inbox_cursor",
    "rate_bucket",
    "user_frequency",
    "user_features",
    "user_history",
    "user_history_prefix",
    "user_profiles",
    "quarantine",
    "consent_ledger",
    "consent_denied",
    "consent_denied_scoped",
    "topics",
    "erased_users",
    "retention",
    "privacy_policy",
    "privacy_audit",
    "audit",
    "audit_once",
    "traffic_history",
    "incidents",
    "data_keys",
    "traffic_counts",
    "traffic_state",
    "throttles",
    "alerts_stream",
    "cleared_alerts",
    "LANES",
    "campaigns",
    "campaign_state",
    "campaign_runs",
    "campaign_run",
    "campaign_arms",
    "campaign_schedules",
    "campaign_pending",
    "scheduler_lock",
    "scheduler_fence",
    "retenant_key",
]

TENANT_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
LANES = ("transactional", "marketing")


def validate_tenant_id(tenant_id: str) -> str:
    if not isinstance(tenant_id, str) or not TENANT_ID_PATTERN.fullmatch(tenant_id):
        raise ValueError(
            f"tenant id must match {TENANT_ID_PATTERN.pattern} "
            f"(lower-case letters, digits, '_' and '-', 1-63 characters), got {tenant_id!r}"
        )
    return tenant_id


@functools.lru_cache(maxsize=4096)
def _tenant(tenant_id: str) -> str:
    # Cached: the delivery hot path names several keys per push, all of a few tenants.
    return f"pp:{{{validate_tenant_id(tenant_id)}}}"


def _part(name: str, value: str) -> str:
    if not value or any(c in value for c in "{}\n\r"):
        raise ValueError(f"{name} must be non-empty without braces or newlines, got {value!r}")
    return value


def tenant_prefix(tenant_id: str) -> str:
    """The prefix every key of the tenant starts with (ACL users are limited to it)."""
    return f"{_tenant(tenant_id)}:"


def tenant_pattern(tenant_id: str) -> str:
    """A SCAN/ACL pattern matching all of the tenant's keys."""
    return f"{_tenant(tenant_id)}:*"


def tenants_set() -> str:
    return "pp:global:tenants"


def api_key_index() -> str:
    """Hash: sha256(api key) -> tenant id, to find a key's tenant without trying each one."""
    return "pp:global:apikeys"


def tenant_meta(tenant_id: str) -> str:
    return f"{_tenant(tenant_id)}:meta"


def tenant_api_keys(tenant_id: str) -> str:
    return f"{_tenant(tenant_id)}:apikeys"


def tenant_secret(tenant_id: str) -> str:
    return f"{_tenant(tenant_id)}:secret"


def outbox_stream(tenant_id: str, lane: str) -> str:
    if lane not in LANES:
        raise ValueError(f"lane must be one of {LANES}, got {lane!r}")
    return f"{_tenant(tenant_id)}:outbox:{lane}"


def push_status(tenant_id: str, push_id: str) -> str:
    return f"{push_status_prefix(tenant_id)}{_part('push_id', push_id)}"


def push_status_prefix(tenant_id: str) -> str:
    """``push_status(tenant_id, p)`` is this plus ``p``: for a script that names many of them."""
    return f"{_tenant(tenant_id)}:push:"


def push_retry(tenant_id: str, push_id: str) -> str:
    """Hash: a channel push's retry state (``tries``, ``retry_at``, ``last_error``)."""
    return f"{_tenant(tenant_id)}:pushretry:{_part('push_id', push_id)}"


def status_counts(tenant_id: str) -> str:
    return f"{_tenant(tenant_id)}:pushcounts"


def dead_letter_stream(tenant_id: str) -> str:
    """Stream of pushes that could not be delivered, each with its reason."""
    return f"{_tenant(tenant_id)}:deadletter"


def inbox_stream(tenant_id: str, user_id: str) -> str:
    return f"{inbox_stream_prefix(tenant_id)}{_part('user_id', user_id)}"


def inbox_stream_prefix(tenant_id: str) -> str:
    """``inbox_stream(tenant_id, u)`` is this plus ``u``: for a script that names many of them."""
    return f"{_tenant(tenant_id)}:inbox:"


def inbox_channel(tenant_id: str) -> str:
    """Pub/sub channel announcing new inbox entries of the tenant (payload: user ids, one a line)."""
    return f"{_tenant(tenant_id)}:inbox-events"


def user_features(tenant_id: str) -> str:
    """Hash: user id -> feature vector at the latest cutoff (packed float64; see featurestore)."""
    return f"{_tenant(tenant_id)}:features"


def user_history(tenant_id: str, user_id: str) -> str:
    """String: the user's ingested events, packed records appended on arrival (onlinefeatures)."""
    return f"{user_history_prefix(tenant_id)}{_part('user_id', user_id)}"


def user_profiles(tenant_id: str) -> str:
    """Hash: user id -> JSON of the user's pseudonymised, non-personal attributes."""
    return f"{_tenant(tenant_id)}:profiles"


def quarantine(tenant_id: str) -> str:
    """Hash: user id -> reason, the users the guard keeps out of training and targeting."""
    return f"{_tenant(tenant_id)}:quarantine"


def consent_ledger(tenant_id: str, user_id: str) -> str:
    """Stream: the user's consent changes, append-only (purpose, status, source, policy version)."""
    return f"{_tenant(tenant_id)}:consent:{_part('user_id', user_id)}"


def consent_denied(tenant_id: str, purpose: str) -> str:
    """Hash: user id -> JSON of the change that took away the purpose (``pipeline.consent``
    keeps it in step with the ledgers; delivery and training read it)."""
    return f"{_tenant(tenant_id)}:consent-denied:{_part('purpose', purpose)}"


def consent_denied_scoped(tenant_id: str) -> str:
    """Hash: ``<user id>/topic:<topic>`` or ``<user id>/channel:<channel>`` -> JSON of the change
    that took the topic or channel away for marketing (``pipeline.consent``); ``/`` is in no id."""
    return f"{_tenant(tenant_id)}:consent-denied-scoped"


def topics(tenant_id: str) -> str:
    """Hash: topic name -> JSON {kind: optional|required, description}, the tenant's topics."""
    return f"{_tenant(tenant_id)}:topics"


def erased_users(tenant_id: str) -> str:
    """Hash: HMAC of an erased user's id under the tenant secret -> JSON (time, actor); the
    tombstones of ``pipeline.subjects``, which never hold the id itself."""
    return f"{_tenant(tenant_id)}:erased"


def retention(tenant_id: str) -> str:
    """Hash: the tenant's retention policy (``policy``, JSON of ages in days) and the report of
    its latest sweep (``last_sweep``); see ``pipeline.retention``."""
    return f"{_tenant(tenant_id)}:retention"


def user_history_prefix(tenant_id: str) -> str:
    """``user_history(tenant_id, u)`` is this plus ``u``: to find every user's history."""
    return f"{_tenant(tenant_id)}:history:"


def inbox_cursor(tenant_id: str, user_id: str) -> str:
    """The id of the last inbox entry the user's device acknowledged; a reconnect resumes after it."""
    return f"{_tenant(tenant_id)}:inbox-cursor:{_part('user_id', user_id)}"


def rate_bucket(tenant_id: str) -> str:
    """Hash: the tenant's send token bucket (``tokens``, ``at``), kept by ``pipeline.ratelimit``."""
    return f"{_tenant(tenant_id)}:ratebucket"


def user_frequency(tenant_id: str, user_id: str) -> str:
    """Hash: marketing pushes delivered to the user per local day (``d:<date>``) and week."""
    return f"{_tenant(tenant_id)}:freq:{_part('user_id', user_id)}"


def privacy_policy(tenant_id: str) -> str:
    """String: the tenant's privacy policy as JSON (entity type -> operator)."""
    return f"{_tenant(tenant_id)}:privacy-policy"


def privacy_audit(tenant_id: str) -> str:
    """Stream: one entry per privacy run, counts per column and entity type, never values."""
    return f"{_tenant(tenant_id)}:privacy-audit"


def audit(tenant_id: str) -> str:
    """Stream: the tenant's audit trail (``pipeline.audit``), appended to and never trimmed."""
    return f"{_tenant(tenant_id)}:audit"


def audit_once(tenant_id: str, what: str) -> str:
    """String with a TTL: an event of ``what`` (a key's use, a refused key) was audited lately,
    so a hammering client adds one entry per period, not one per request."""
    return f"{_tenant(tenant_id)}:audit-once:{what}"


def traffic_counts(tenant_id: str, series: str) -> str:
    """Hash: epoch second -> requests in that second, for one traffic series (an API key, ...)."""
    return f"{_tenant(tenant_id)}:traffic:{_part('series', series)}"


def traffic_history(tenant_id: str) -> str:
    """Stream: per guard round and series, the finished seconds' request counts (JSON), capped,
    so an incident report can plot the traffic after the guard has consumed the counts."""
    return f"{_tenant(tenant_id)}:traffic-history"


def data_keys(tenant_id: str) -> str:
    """Hash: the tenant's wrapped data keys (``k:<version>:<master key id>``) and ``current``;
    see ``pipeline.atrest``."""
    return f"{_tenant(tenant_id)}:data-keys"


def incidents(tenant_id: str) -> str:
    """Hash: incident id -> JSON record (``pipeline.incidents``): state, times, actions."""
    return f"{_tenant(tenant_id)}:incidents"


def traffic_state(tenant_id: str) -> str:
    """Hash: series -> JSON state of its online detector (baseline, last second processed)."""
    return f"{_tenant(tenant_id)}:traffic-state"


def throttles(tenant_id: str) -> str:
    """Hash: series -> JSON {until, reason, alert_id}, the traffic the guard currently throttles."""
    return f"{_tenant(tenant_id)}:throttles"


def alerts_stream(tenant_id: str) -> str:
    """Stream of the guard's alerts for the tenant, each with its reason and action."""
    return f"{_tenant(tenant_id)}:alerts"


def cleared_alerts(tenant_id: str) -> str:
    """Hash: alert id -> JSON {operator, at}, the alerts an operator has cleared."""
    return f"{_tenant(tenant_id)}:alerts-cleared"


def api_request_window(tenant_id: str, second: int) -> str:
    """Counter of the tenant's API requests in one epoch second (the plan's request limit)."""
    return f"{_tenant(tenant_id)}:apireq:{int(second)}"


def guard_lock(tenant_id: str) -> str:
    """Held briefly by the one API replica that feeds the tenant's traffic to the guard."""
    return f"{_tenant(tenant_id)}:guardlock"


def events_stream(tenant_id: str) -> str:
    """Stream of ingested behaviour events (bounded), the input of the next feature build."""
    return f"{_tenant(tenant_id)}:events"


def event_ids(tenant_id: str, day: int) -> str:
    """Set of event ids received on one UTC day (days since the epoch), for deduplication."""
    return f"{_tenant(tenant_id)}:eventids:{int(day)}"


def send_hours(tenant_id: str) -> str:
    """Hash: user id -> best hour (0-23, user's local time) to receive a push."""
    return f"{_tenant(tenant_id)}:sendhours"


def retenant_key(key: str, from_tenant_id: str, to_tenant_id: str) -> str:
    """The same key of another tenant: ``pp:{a}:outbox:marketing`` -> ``pp:{b}:outbox:marketing``.

    Restoring a backup under a new tenant id renames every key this way.
    """
    old = tenant_prefix(from_tenant_id)
    if not key.startswith(old):
        raise ValueError(f"key {key!r} is not one of tenant {from_tenant_id!r}'s (they start {old!r})")
    return tenant_prefix(to_tenant_id) + key[len(old):]


# --- campaigns (pipeline/campaigns) ---


def campaigns(tenant_id: str) -> str:
    """Hash: campaign id -> the campaign's spec as JSON."""
    return f"{_tenant(tenant_id)}:campaigns"


def campaign_state(tenant_id: str, campaign_id: str) -> str:
    """Hash: a campaign's schedule state (status, next due, last fencing token, fired due times)."""
    return f"{_tenant(tenant_id)}:campaign-state:{_part('campaign_id', campaign_id)}"


def campaign_runs(tenant_id: str, campaign_id: str) -> str:
    """Sorted set: run id -> when the run was created (epoch seconds)."""
    return f"{_tenant(tenant_id)}:campaign-runs:{_part('campaign_id', campaign_id)}"


def campaign_run(tenant_id: str, campaign_id: str, run_id: str) -> str:
    """Hash: one run's state and counts (its report's inputs)."""
    return (f"{_tenant(tenant_id)}:campaign-run:{_part('campaign_id', campaign_id)}:"
            f"{_part('run_id', run_id)}")


def campaign_arms(tenant_id: str, campaign_id: str, run_id: str) -> str:
    """Hash: user id -> arm of a run (a variant, ``holdout``, or ``!<reason>`` when suppressed)."""
    return (f"{_tenant(tenant_id)}:campaign-arms:{_part('campaign_id', campaign_id)}:"
            f"{_part('run_id', run_id)}")


def campaign_schedules() -> str:
    """Sorted set: ``<tenant>/<campaign>`` -> next due time (epoch seconds), for every scheduler."""
    return "pp:global:campaign-schedules"


def campaign_pending() -> str:
    """Sorted set: ``<tenant>/<campaign>/<run>`` fired but not finished -> lease deadline."""
    return "pp:global:campaign-pending"


def scheduler_lock() -> str:
    """String: the token of the scheduler that may fire runs now (SET NX PX)."""
    return "pp:global:scheduler-lock"


def scheduler_fence() -> str:
    """Counter: each lock acquisition takes the next value as its fencing token."""
    return "pp:global:scheduler-fence"
