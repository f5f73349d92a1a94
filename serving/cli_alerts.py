"""`pushpilot alerts ...`: read and clear a tenant's traffic-guard alerts."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

from serving.cli_common import fail, redis_client

__all__ = ["app"]

app = typer.Typer(help="The traffic guard's alerts, per tenant.", no_args_is_help=True)


@app.command("list")
def alerts_list(
    tenant: Annotated[str, typer.Option(help="Tenant id.")],
    include_cleared: Annotated[bool, typer.Option("--all", help="Include cleared alerts.")] = False,
) -> None:
    """One JSON line per alert: what was seen, what the guard did, who cleared it."""
    from pipeline import guard, tenants

    with redis_client() as r:
        tenants.get_tenant(r, tenant)
        for alert in guard.list_alerts(r, tenant, include_cleared):
            typer.echo(json.dumps(alert, sort_keys=True))


@app.command("clear")
def alerts_clear(
    tenant: Annotated[str, typer.Option(help="Tenant id.")],
    alert_id: Annotated[str, typer.Option("--id", help="Alert id from `alerts list`.")],
    operator: Annotated[str, typer.Option(help="Who clears it (kept with the alert).")],
) -> None:
    """Clear an alert and lift the throttle it set."""
    from pipeline import audit, guard, tenants

    with redis_client() as r:
        tenants.get_tenant(r, tenant)
        try:
            cleared = guard.clear_alert(r, tenant, alert_id, operator, time.time())
        except ValueError as e:
            fail(str(e))
        except Exception as e:  # noqa: BLE001 - Redis refuses malformed stream ids
            fail(f"--id: {alert_id!r} is not an alert id ({e})")
        if cleared:
            audit.record(r, tenant, audit.cli_actor(), "alert.cleared", f"alert:{alert_id}",
                         operator=operator)
    if not cleared:
        fail(f"no alert {alert_id!r} for tenant {tenant!r}")
    typer.echo(json.dumps({"id": alert_id, "cleared": True, "operator": operator}))
