"""`pushpilot compliance ...`: what a tenant holds, keeps and was asked for, and the retention
sweeper (docs/consent.md)."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

from serving.cli_common import fail, redis_client, settings

__all__ = ["app"]

app = typer.Typer(help="Compliance: a tenant's data, retention, consent and requests.", no_args_is_help=True)

_Days = Annotated[int | None, typer.Option(min=0, help="Days; 0 removes the age limit.")]


@app.command("report")
def report(tenant: Annotated[str, typer.Option(help="Tenant id.")]) -> None:
    """Print the tenant's compliance report as JSON: data held (counts), retention and the
    latest sweep, consent coverage and policy versions, exports and erasures. Counts only,
    never a user id."""
    from pipeline.compliance import compliance_report

    with redis_client() as r:
        body = compliance_report(r, tenant, inbox_max_len=settings().inbox_max_len)
    typer.echo(json.dumps(body))


@app.command("retention")
def retention(
    tenant: Annotated[str, typer.Option(help="Tenant id.")],
    events_days: _Days = None,
    receipts_days: _Days = None,
    inbox_days: _Days = None,
) -> None:
    """Show the tenant's retention policy, or change the ages given, as JSON.

    Events (stream and per-user histories), receipts (status records and dead letters) and
    inbox entries older than their age are removed by `pushpilot compliance sweep`.
    """
    from dataclasses import asdict, replace

    from pipeline import audit
    from pipeline import retention as ret

    given = {name: None if days == 0 else days for name, days in
             (("events_days", events_days), ("receipts_days", receipts_days),
              ("inbox_days", inbox_days)) if days is not None}
    with redis_client() as r:
        policy = ret.get_policy(r, tenant)
        if given:
            policy = replace(policy, **given)  # validated before anything is written
            ret.set_policy(r, tenant, policy)
            audit.record(r, tenant, audit.cli_actor(), "retention.set", policy=asdict(policy))
    typer.echo(json.dumps({"tenant_id": tenant, **asdict(policy)}))


@app.command("sweep")
def sweep(
    tenant: Annotated[list[str] | None, typer.Option(help="Tenant id; repeatable. Default: every tenant with a retention policy.")] = None,
    every: Annotated[float | None, typer.Option(min=1, help="Sweep again every this many seconds, until stopped (a service); default: once.")] = None,
) -> None:
    """Remove data older than each tenant's retention policy; one JSON line per tenant swept.

    Safe beside live traffic and idempotent; stderr shows each step.
    """
    from pipeline import retention as ret
    from pipeline import tenants

    with redis_client() as r:
        for tenant_id in tenant or []:
            tenants.get_tenant(r, tenant_id)  # an unknown tenant fails before any sweep
        while True:
            started = time.monotonic()
            chosen = tenant or [t for t in tenants.list_tenants(r)
                                if not ret.get_policy(r, t).is_empty]
            if not chosen and every is None:
                fail("no tenant has a retention policy; set one with `pushpilot compliance retention`")
            for tenant_id in chosen:
                done = ret.sweep(r, tenant_id, progress=lambda step, t=tenant_id: typer.echo(
                    f"sweeping {t}: {step}", err=True))
                typer.echo(json.dumps(done.as_json()))
            if every is None:
                return
            try:
                time.sleep(max(0.0, every - (time.monotonic() - started)))
            except KeyboardInterrupt:
                return
