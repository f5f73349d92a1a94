"""`pushpilot incident ...`: open, contain, close and report a tenant's security incident."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from serving.cli_common import fail, redis_client

__all__ = ["app"]

app = typer.Typer(help="Incident response: open from alerts, contain in one step, close, report.",
                  no_args_is_help=True)

_Tenant = Annotated[str, typer.Option(help="Tenant id.")]
_Id = Annotated[str, typer.Option("--id", help="Incident id, from `incident open` or `incident list`.")]


def _summary(record: dict) -> str:  # type: ignore[type-arg]
    return json.dumps({k: record[k] for k in ("id", "state", "title", "alert_ids", "series",
                                              "opened_at", "contained_at", "closed_at")})


@app.command("open")
def incident_open(
    tenant: _Tenant,
    title: Annotated[str, typer.Option(help="What happened, in a line.")],
    alert: Annotated[list[str] | None, typer.Option("--alert", help="Alert id it covers; repeatable. Default: every uncleared alert.")] = None,
) -> None:
    """Open an incident from the guard's alerts; prints it as JSON."""
    from pipeline import audit, incidents

    with redis_client() as r:
        record = incidents.open_incident(r, tenant, title, actor=audit.cli_actor(),
                                         alert_ids=alert or None)
    typer.echo(_summary(record))


@app.command("contain")
def incident_contain(
    tenant: _Tenant,
    incident_id: _Id,
    revoke_key: Annotated[list[str] | None, typer.Option("--revoke-key", help="Key id to revoke; repeatable. Default: the keys the incident's alerts are about.")] = None,
    pause_campaigns: Annotated[bool, typer.Option(help="Take the tenant's scheduled campaigns off the schedule.")] = True,
    requests_per_second: Annotated[int | None, typer.Option(min=1, help="Lower the plan's API request rate to this.")] = None,
    sends_per_second: Annotated[int | None, typer.Option(min=1, help="Lower the plan's send rate to this.")] = None,
) -> None:
    """Revoke keys, pause campaigns and lower the tenant's rates, in one step; prints the actions."""
    from pipeline import audit, incidents

    with redis_client() as r:
        record = incidents.contain(r, tenant, incident_id, actor=audit.cli_actor(),
                                   revoke_keys=revoke_key or None, pause_campaigns=pause_campaigns,
                                   requests_per_second=requests_per_second,
                                   sends_per_second=sends_per_second)
    typer.echo(json.dumps({"id": record["id"], "state": record["state"],
                           "actions": [{k: v for k, v in a.items() if k != "previous_plan"}
                                       for a in record["actions"]]}))


@app.command("close")
def incident_close(
    tenant: _Tenant,
    incident_id: _Id,
    notes: Annotated[str, typer.Option(help="What was found and what to improve.")] = "",
    keep_containment: Annotated[bool, typer.Option("--keep-containment", help="Leave campaigns paused and rates lowered.")] = False,
) -> None:
    """Close an incident; puts paused campaigns and lowered rates back unless told not to."""
    from pipeline import audit, incidents

    with redis_client() as r:
        record = incidents.close_incident(r, tenant, incident_id, actor=audit.cli_actor(),
                                          notes=notes, restore=not keep_containment)
    typer.echo(_summary(record))


@app.command("list")
def incident_list(tenant: _Tenant) -> None:
    """One JSON line per incident, oldest first."""
    from pipeline import incidents

    with redis_client() as r:
        for record in incidents.list_incidents(r, tenant):
            typer.echo(_summary(record))


@app.command("report")
def incident_report(
    tenant: _Tenant,
    incident_id: _Id,
    format: Annotated[str, typer.Option(help="markdown or html.")] = "markdown",
    out: Annotated[Path | None, typer.Option(help="Write the report here instead of stdout.")] = None,
) -> None:
    """The incident's timeline (alerts, audit entries, actions) and its traffic per API key."""
    from pipeline import incidents

    if format not in ("markdown", "html"):
        fail(f"--format: choose markdown or html, got {format!r}")
    with redis_client() as r:
        make = incidents.report_markdown if format == "markdown" else incidents.report_html
        text = make(r, tenant, incident_id)
    if out is None:
        typer.echo(text)
    else:
        out.write_text(text)
        typer.echo(f"wrote {out}", err=True)
