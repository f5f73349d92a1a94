"""Incident response for one tenant: open, contain in one step, close, and a timeline report.

The security runbook's four stages map onto commands: *detection* is the guard's alerts (an
incident is opened from them, or by hand), *containment* is ``contain`` (revokes API keys,
pauses the tenant's scheduled campaigns and lowers its request and send rates, all in one
command, each step audited), *post-incident analysis* is ``report`` (a timeline of alerts,
audit entries and actions, and the traffic per API key, as Markdown or HTML), and *improvement*
is what ``close`` records (its notes) and undoes (the campaigns and rates, unless kept).

An incident record is JSON in ``keys.incidents``: its state (``open``, ``contained``,
``closed``), times, actors, the alerts it covers and every action taken with what it changed,
so that ``close`` can undo exactly that.
"""

from __future__ import annotations

import html
import json
import secrets
import time
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import Any

import redis

from pipeline import audit, guard, keys, tenants
from pipeline.campaigns.scheduler import schedule_campaign
from pipeline.campaigns.store import list_campaigns, load_campaign, set_campaign_status
from pipeline.errors import InvalidInputError

__all__ = ["open_incident", "contain", "close_incident", "get_incident", "list_incidents",
           "report_markdown", "report_html", "STATES"]

STATES = ("open", "contained", "closed")
_MAX_TEXT = 500


def _now(now: float | None) -> float:
    return time.time() if now is None else now


def _save(r: redis.Redis, record: dict[str, Any]) -> None:
    r.hset(keys.incidents(record["tenant_id"]), record["id"], json.dumps(record, sort_keys=True))


def _text(value: object, field: str, *, may_be_empty: bool = False) -> str:
    if not isinstance(value, str) or len(value) > _MAX_TEXT or not (value.strip() or may_be_empty):
        raise InvalidInputError(field, f"give 1-{_MAX_TEXT} characters, got {str(value)[:40]!r}")
    return value.strip()


def get_incident(r: redis.Redis, tenant_id: str, incident_id: str) -> dict[str, Any]:
    tenants.get_tenant(r, tenant_id)
    raw = r.hget(keys.incidents(tenant_id), incident_id) if isinstance(incident_id, str) else None
    if raw is None:
        raise InvalidInputError("incident", f"tenant {tenant_id!r} has no incident {incident_id!r}; "
                                "see `pushpilot incident list`")
    return dict(json.loads(raw))


def list_incidents(r: redis.Redis, tenant_id: str) -> list[dict[str, Any]]:
    tenants.get_tenant(r, tenant_id)
    found = [json.loads(v) for v in r.hvals(keys.incidents(tenant_id))]
    return sorted(found, key=lambda i: i["opened_at"])


def open_incident(r: redis.Redis, tenant_id: str, title: str, *, actor: str,
                  alert_ids: list[str] | None = None, now: float | None = None) -> dict[str, Any]:
    """A new open incident; ``alert_ids`` (default: the tenant's uncleared alerts) are the
    detection it starts from."""
    tenants.get_tenant(r, tenant_id)
    title = _text(title, "title")
    alerts = {a["id"]: a for a in guard.list_alerts(r, tenant_id, include_cleared=True)}
    if alert_ids is None:
        alert_ids = [a["id"] for a in guard.list_alerts(r, tenant_id)]
    unknown = [a for a in alert_ids if a not in alerts]
    if unknown:
        raise InvalidInputError("alert", f"tenant {tenant_id!r} has no alert {unknown[0]!r}; "
                                "see `pushpilot alerts list`")
    at = _now(now)
    record = {
        "id": "inc-" + datetime.fromtimestamp(at, UTC).strftime("%Y%m%dT%H%M%S") + "-"
              + secrets.token_hex(2),
        "tenant_id": tenant_id, "title": title, "state": "open", "opened_at": at,
        "opened_by": actor, "alert_ids": list(alert_ids),
        "series": sorted({alerts[a].get("series", "") for a in alert_ids} - {""}),
        "actions": [], "contained_at": None, "closed_at": None, "notes": "",
    }
    _save(r, record)
    audit.record(r, tenant_id, actor, "incident.opened", f"incident:{record['id']}",
                 alert_ids=alert_ids)
    return record


def _alerted_keys(record: dict[str, Any]) -> list[str]:
    return sorted(s.removeprefix("key:") for s in record["series"] if s.startswith("key:"))


def _with_what_they_made(to_revoke: list[str], known: dict[str, dict[str, Any]]) -> list[str]:
    """``to_revoke`` and every key made with one of them, and with those, and so on: a leaked
    admin key may have minted keys of its own."""
    out = list(to_revoke)
    grew = True
    while grew:
        made = [k for k, key in known.items()
                if k not in out and key.get("created_by", "").removeprefix("key:") in out]
        out.extend(made)
        grew = bool(made)
    return out


def contain(r: redis.Redis, tenant_id: str, incident_id: str, *, actor: str,
            revoke_keys: list[str] | None = None, pause_campaigns: bool = True,
            requests_per_second: int | None = None, sends_per_second: int | None = None,
            now: float | None = None) -> dict[str, Any]:
    """Contain an open incident in one step, and record each action on it and in the audit.

    - revokes ``revoke_keys`` (default: the keys whose traffic the incident's alerts are about)
      and every key one of them made;
    - pauses every scheduled campaign of the tenant (``close`` puts them back on the schedule);
    - lowers the plan's ``requests_per_second`` / ``sends_per_second`` to the given values
      (``close`` restores the values it found).

    Everything is checked before anything changes: an unknown key id, a closed incident, a
    rate below 1 or above the plan's changes nothing. Each step is saved on the incident as
    it is done, so a failure part-way leaves a record of what was done.
    """
    record = get_incident(r, tenant_id, incident_id)
    if record["state"] == "closed":
        raise InvalidInputError("incident", f"incident {incident_id} is closed; open a new one")
    to_revoke = _alerted_keys(record) if revoke_keys is None else list(revoke_keys)
    known = {k["key_id"]: k for k in tenants.list_api_keys(r, tenant_id)}
    unknown = [k for k in to_revoke if k not in known]
    if unknown:
        raise InvalidInputError("revoke_keys", f"tenant {tenant_id!r} has no key {unknown[0]!r}")
    plan = tenants.get_tenant(r, tenant_id).plan
    changes: dict[str, int] = {}
    for name, value in (("requests_per_second", requests_per_second),
                        ("sends_per_second", sends_per_second)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInputError(name, f"must be a whole number >= 1, got {value!r}")
        if 0 < getattr(plan, name) < value:  # 0: no limit, so any value lowers it
            raise InvalidInputError(name, f"a containment only lowers: the plan allows "
                                          f"{getattr(plan, name)}, got {value}")
        changes[name] = value
    lowered = replace(plan, **changes) if changes else plan  # validates before any change

    at = _now(now)
    target = f"incident:{incident_id}"
    done: list[dict[str, Any]] = []

    def step(action: dict[str, Any]) -> dict[str, Any]:
        record["actions"].append(action)
        done.append(action)
        return action

    try:
        revoked = step({"at": at, "action": "keys.revoked", "key_ids": []})
        for key_id in _with_what_they_made(to_revoke, known):
            if known[key_id]["state"] != "revoked":
                tenants.revoke_api_key(r, tenant_id, key_id, actor=actor)
                revoked["key_ids"].append(key_id)
                _save(r, record)
        if pause_campaigns:
            paused = step({"at": at, "action": "campaigns.paused", "campaign_ids": []})
            for campaign in list_campaigns(r, tenant_id):
                if campaign["status"] == "active" and campaign["next_due"] is not None:
                    r.zrem(keys.campaign_schedules(), f"{tenant_id}/{campaign['id']}")
                    set_campaign_status(r, tenant_id, campaign["id"], "paused")
                    paused["campaign_ids"].append(campaign["id"])
                    _save(r, record)
        if changes:
            tenants.set_plan(r, tenant_id, lowered)
            step({"at": at, "action": "plan.lowered", "changes": changes,
                  "previous_plan": asdict(plan)})
        record["state"] = "contained"
        record["contained_at"] = record["contained_at"] or at
        record["contained_by"] = actor
    finally:
        _save(r, record)
        audit.record(r, tenant_id, actor, "incident.contained", target,
                     complete=record["state"] == "contained",
                     actions=[{k: v for k, v in a.items() if k != "previous_plan"} for a in done])
    return record


def close_incident(r: redis.Redis, tenant_id: str, incident_id: str, *, actor: str,
                   notes: str = "", restore: bool = True, now: float | None = None) -> dict[str, Any]:
    """Close an incident with its notes (what to improve). With ``restore`` the campaigns it
    paused, and still paused, go back on the schedule, and each plan value it lowered gets the
    value it had before the first lowering (values changed otherwise are left); revoked keys
    stay revoked (make new ones)."""
    record = get_incident(r, tenant_id, incident_id)
    if record["state"] == "closed":
        raise InvalidInputError("incident", f"incident {incident_id} is already closed")
    notes = _text(notes, "notes", may_be_empty=True)
    at = _now(now)
    undone: list[dict[str, Any]] = []
    if restore:
        paused = [c for a in record["actions"] if a["action"] == "campaigns.paused"
                  for c in a["campaign_ids"]]
        if paused:
            statuses = {c["id"]: c["status"] for c in list_campaigns(r, tenant_id)}
            resumed = []
            for campaign_id in dict.fromkeys(paused):
                if statuses.get(campaign_id) != "paused":
                    continue  # deleted, cancelled or resumed by someone since: theirs to decide
                try:
                    schedule_campaign(r, load_campaign(r, tenant_id, campaign_id), at)
                    resumed.append(campaign_id)
                except (InvalidInputError, LookupError, ValueError):
                    continue  # its schedule ended meanwhile: stays off
            undone.append({"at": at, "action": "campaigns.resumed", "campaign_ids": resumed})
        before: dict[str, int] = {}
        for action in record["actions"]:
            if action["action"] == "plan.lowered":
                for name in action["changes"]:
                    before.setdefault(name, action["previous_plan"][name])
        if before:
            tenants.set_plan(r, tenant_id, replace(tenants.get_tenant(r, tenant_id).plan, **before))
            undone.append({"at": at, "action": "plan.restored", "values": before})
    record["actions"].extend(undone)
    record.update(state="closed", closed_at=at, closed_by=actor, notes=notes)
    _save(r, record)
    audit.record(r, tenant_id, actor, "incident.closed", f"incident:{incident_id}",
                 undone=[a["action"] for a in undone])
    return record


# --- the report ---------------------------------------------------------------------------------

_BARS = " ▁▂▃▄▅▆▇█"


def _iso(at: float | None) -> str:
    return "-" if at is None else datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _window(record: dict[str, Any], alerts: list[dict[str, str]]) -> tuple[float, float]:
    seconds = [float(a["second"]) for a in alerts if a.get("second")]
    start = min([record["opened_at"], *seconds]) - 300
    return start, (record["closed_at"] or time.time()) + 60


def _timeline(r: redis.Redis, record: dict[str, Any]) -> tuple[list[tuple[float, str, str, str]],
                                                                 dict[str, dict[int, int]],
                                                                 tuple[float, float]]:
    tenant_id = record["tenant_id"]
    every = {a["id"]: a for a in guard.list_alerts(r, tenant_id, include_cleared=True)}
    alerts = [every[a] for a in record["alert_ids"] if a in every]
    start, end = _window(record, alerts)
    rows: list[tuple[float, str, str, str]] = []
    for alert in alerts:
        rows.append((float(alert.get("second", 0)), "guard", "alert", alert.get("reason", "")))
    for entry in audit.read_all(r, tenant_id, since=start, until=end):
        if entry.action in ("key.used", "audit.read", "alerts.read"):
            continue  # routine reads, not part of the story
        detail = ", ".join(f"{k}={v}" for k, v in entry.detail.items() if k != "actions")
        rows.append((entry.at, entry.actor, entry.action, f"{entry.target} {detail}".strip()))
    rows.sort(key=lambda row: row[0])
    return rows, guard.traffic_history(r, tenant_id, start, end), (start, end)


def _buckets(per_second: dict[int, int], start: float, end: float, n: int = 60) -> list[float]:
    width = max(1.0, (end - start) / n)
    out = [0.0] * n
    for second, count in per_second.items():
        i = min(n - 1, max(0, int((second - start) / width)))
        out[i] += count / width
    return out


def report_markdown(r: redis.Redis, tenant_id: str, incident_id: str) -> str:
    """The incident as Markdown: summary, timeline, traffic per series (requests/s), notes."""
    record = get_incident(r, tenant_id, incident_id)
    rows, traffic, (start, end) = _timeline(r, record)
    to_contain = (record["contained_at"] - record["opened_at"]) if record["contained_at"] else None
    lines = [
        f"# Incident {record['id']}: {record['title']}", "",
        f"- Tenant: `{tenant_id}`; state: **{record['state']}**",
        f"- Opened {_iso(record['opened_at'])} by {record['opened_by']}",
        f"- Contained {_iso(record['contained_at'])}"
        + (f" ({to_contain:.1f} s after opening)" if to_contain is not None else ""),
        f"- Closed {_iso(record['closed_at'])}",
        f"- Alerts: {', '.join(record['alert_ids']) or 'none'}", "",
        "## Timeline", "", "| time (UTC) | actor | what | detail |", "|---|---|---|---|",
    ]
    for at, actor, what, detail in rows:
        cell = detail.replace("|", "\\|")
        lines.append(f"| {_iso(at)[11:19]} | {actor} | {what} | {cell} |")
    lines += ["", "## Actions", ""]
    for action in record["actions"]:
        body = {k: v for k, v in action.items() if k not in ("at", "action", "previous_plan")}
        lines.append(f"- {_iso(action['at'])[11:19]} {action['action']}: {json.dumps(body)}")
    lines += ["", f"## Traffic ({_iso(start)[11:19]} to {_iso(end)[11:19]}, requests/s per "
              "API key, 60 buckets)", ""]
    if not traffic:
        lines.append("No traffic recorded by the guard in this window.")
    for series, per_second in sorted(traffic.items()):
        values = _buckets(per_second, start, end)
        top = max(values) or 1.0
        bars = "".join(_BARS[min(8, round(8 * v / top))] for v in values)
        lines.append(f"- `{series}` peak {max(per_second.values())}/s, "
                     f"{sum(per_second.values())} requests: `{bars}`")
    lines += ["", "## Notes", "", record["notes"] or "(none yet)", ""]
    return "\n".join(lines)


def report_html(r: redis.Redis, tenant_id: str, incident_id: str) -> str:
    """The same report as one HTML page, with the traffic drawn as an SVG chart."""
    record = get_incident(r, tenant_id, incident_id)
    rows, traffic, (start, end) = _timeline(r, record)
    esc = html.escape
    parts = [f"<!doctype html><meta charset='utf-8'><title>{esc(record['id'])}</title>",
             f"<h1>Incident {esc(record['id'])}: {esc(record['title'])}</h1>",
             f"<p>Tenant {esc(tenant_id)}, state <b>{esc(record['state'])}</b>; opened "
             f"{_iso(record['opened_at'])}, contained {_iso(record['contained_at'])}, closed "
             f"{_iso(record['closed_at'])}.</p>", "<h2>Timeline</h2><table border='1'>",
             "<tr><th>time (UTC)</th><th>actor</th><th>what</th><th>detail</th></tr>"]
    parts += [f"<tr><td>{_iso(at)[11:19]}</td><td>{esc(actor)}</td><td>{esc(what)}</td>"
              f"<td>{esc(detail)}</td></tr>" for at, actor, what, detail in rows]
    parts.append("</table><h2>Traffic (requests/s per API key)</h2>")
    width, height = 600, 160
    top = max((max(_buckets(p, start, end)) for p in traffic.values()), default=1.0) or 1.0
    parts.append(f"<svg width='{width}' height='{height + 20}' xmlns='http://www.w3.org/2000/svg'>")
    palette = ("#c0392b", "#2980b9", "#27ae60", "#8e44ad", "#d35400")
    for i, (series, per_second) in enumerate(sorted(traffic.items())):
        values = _buckets(per_second, start, end)
        points = " ".join(f"{j * width / (len(values) - 1):.1f},{height - v * height / top:.1f}"
                          for j, v in enumerate(values))
        color = palette[i % len(palette)]
        parts.append(f"<polyline fill='none' stroke='{color}' points='{points}'/>"
                     f"<text x='4' y='{14 + 14 * i}' fill='{color}'>{esc(series)}</text>")
    parts.append(f"<text x='4' y='{height + 16}'>peak {top:.0f}/s</text></svg>")
    parts.append(f"<h2>Notes</h2><p>{esc(record['notes'] or '(none yet)')}</p>")
    return "\n".join(parts)
