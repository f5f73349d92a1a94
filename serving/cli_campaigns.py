"""`pushpilot campaign ...` and `pushpilot scheduler`: campaign jobs from the terminal."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.campaigns import (
    list_campaigns,
    list_runs,
    load_campaign,
    parse_spec,
    run_record,
    save_campaign,
)
from pipeline.campaigns.scheduler import FiredRun, Scheduler, schedule_campaign, unschedule_campaign
from pipeline.errors import InvalidInputError, PushError
from pipeline.redis_server import connect, redis_url_for
from serving.cli_common import fail, redis_client, settings

__all__ = ["app", "register"]

app = typer.Typer(help="Campaign jobs: create, run on Ray, schedule, report lift.",
                  no_args_is_help=True)
log = logging.getLogger(__name__)

Tenant = Annotated[str, typer.Option("--tenant", help="Tenant id.")]
CampaignId = Annotated[str, typer.Argument(help="Campaign id.")]


def register(cli: typer.Typer) -> None:
    """Add the `campaign` group and the `scheduler` command to the main CLI."""
    cli.add_typer(app, name="campaign")
    cli.command("scheduler")(scheduler_cmd)


def _echo(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def _run_config(redis_url: str, partition_size: int) -> Any:
    from pipeline.atrest import ensure_master_key
    from pipeline.campaigns.runner import RunConfig

    current = settings()
    return RunConfig(redis_url=redis_url, tracking_uri=current.mlflow_tracking_uri,
                     artifact_root=str(current.mlflow_artifact_root),
                     partition_size=partition_size,
                     at_rest_key_file=str(ensure_master_key(current)),
                     encrypt_at_rest=current.encrypt_at_rest)


@app.command("create")
def create_cmd(path: Annotated[Path, typer.Argument(help="Spec file, YAML or JSON.")]) -> None:
    """Validate a spec and store it (replacing the campaign's previous spec)."""
    from pipeline import tenants

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        fail(f"{path}: cannot read the spec: {e.strerror}")
    try:
        spec = parse_spec(text, where=str(path))
    except InvalidInputError as e:
        fail(f"{path}: {e}")
    with redis_client() as r:
        if not tenants.tenant_exists(r, spec.tenant):
            fail(f"tenant: no tenant {spec.tenant!r}; create it with `pushpilot tenant create "
                 f"{spec.tenant}`")
        is_new = save_campaign(r, spec)
    _echo({"campaign": spec.id, "tenant": spec.tenant, "created": is_new})


@app.command("list")
def list_cmd(tenant: Tenant) -> None:
    """The tenant's campaigns with their status, next due time and number of runs."""
    with redis_client() as r:
        _echo(list_campaigns(r, tenant))


@app.command("show")
def show_cmd(campaign: CampaignId, tenant: Tenant) -> None:
    """A campaign's spec, schedule state and runs."""
    from pipeline.campaigns.store import campaign_status

    with redis_client() as r:
        spec = load_campaign(r, tenant, campaign)
        runs = []
        for run_id in list_runs(r, tenant, campaign):
            record = run_record(r, tenant, campaign, run_id)
            runs.append({"run": run_id, "status": record.get("status"),
                         "counts": record.get("counts")})
        _echo({"spec": spec.model_dump(mode="json"), "state": campaign_status(r, tenant, campaign),
               "runs": runs})


@app.command("run")
def run_cmd(
    campaign: CampaignId,
    tenant: Tenant,
    run_id: Annotated[str | None, typer.Option(help="Resume this run; default a new run.")] = None,
    partition_size: Annotated[int, typer.Option(min=1000, help="Users per Ray task.")] = 125_000,
) -> None:
    """Run the campaign now on Ray (a re-run of the same --run-id never sends twice)."""
    from pipeline.campaigns.runner import run_campaign
    from serving.app import start_ray

    current = settings()
    with redis_url_for(current.redis_url, current.data_dir, tls=current.embedded_tls) as redis_url:
        r = connect(redis_url)
        spec = load_campaign(r, tenant, campaign)
        start_ray(current)
        result = run_campaign(r, _run_config(redis_url, partition_size), spec, run_id)
    _echo({"run": result.run_id, "model_version": result.model_version, **result.counts,
           "partitions": result.partitions, "nodes": result.nodes,
           "seconds": {k: round(v, 2) for k, v in result.phase_seconds.items()}})


@app.command("schedule")
def schedule_cmd(campaign: CampaignId, tenant: Tenant) -> None:
    """Put the campaign on the schedule of its spec; `pushpilot scheduler` fires its runs."""
    with redis_client() as r:
        first = schedule_campaign(r, load_campaign(r, tenant, campaign), now=time.time())
    _echo({"campaign": campaign, "next_due": first,
           "next_due_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(first))})


@app.command("cancel")
def cancel_cmd(campaign: CampaignId, tenant: Tenant) -> None:
    """Stop scheduling the campaign; runs already fired finish."""
    with redis_client() as r:
        load_campaign(r, tenant, campaign)
        unschedule_campaign(r, tenant, campaign)
    _echo({"campaign": campaign, "status": "cancelled"})


@app.command("report")
def report_cmd(
    campaign: CampaignId,
    tenant: Tenant,
    run: Annotated[str | None, typer.Option(help="Run id; default the latest.")] = None,
    events: Annotated[Path | None, typer.Option(help="Events file with the conversions; "
                                                "default the tenant's ingested events.")] = None,
) -> None:
    """The run's funnel, receipts, conversions and lift of each variant vs the holdout."""
    from pipeline.campaigns.report import conversions_from_events, run_report
    from pipeline.generator import read_events

    with redis_client() as r:
        runs = list_runs(r, tenant, campaign)
        if not runs:
            load_campaign(r, tenant, campaign)
            fail(f"campaign {campaign!r} has no runs yet; start one with `pushpilot campaign run`")
        run_id = run or runs[-1]
        converted = None
        if events is not None:
            spec = load_campaign(r, tenant, campaign)
            started = float(run_record(r, tenant, campaign, run_id)["started_at"])
            converted = conversions_from_events(
                read_events(events), spec.conversion_event, started,
                started + spec.conversion_window_days * 86_400)
        _echo(run_report(r, tenant, campaign, run_id, converted=converted))


def scheduler_cmd(
    interval_seconds: Annotated[float, typer.Option(min=0.1, help="Seconds between ticks.")] = 1.0,
    once: Annotated[bool, typer.Option(help="Fire what is due now, then exit.")] = False,
    name: Annotated[str | None, typer.Option(help="Scheduler name for the logs.")] = None,
) -> None:
    """Fire due campaign runs (run on Ray); run several for availability, each run fires once."""
    from pipeline.campaigns.runner import run_campaign
    from serving.app import start_ray

    current = settings()
    start_ray(current)
    with redis_url_for(current.redis_url, current.data_dir, tls=current.embedded_tls) as redis_url:
        r = connect(redis_url)
        config = _run_config(redis_url, 125_000)

        def on_fire(run: FiredRun) -> None:
            spec = load_campaign(r, run.tenant_id, run.campaign_id)
            result = run_campaign(r, config, spec, run.run_id)
            typer.echo(json.dumps({"fired": run.run_id, "campaign": run.campaign_id,
                                   "tenant": run.tenant_id, "sent": result.counts["sent"]}))

        scheduler = Scheduler(r, on_fire, name=name)
        if once:
            fired = scheduler.tick(time.time())
            scheduler.release()
            typer.echo(json.dumps({"fired": len(fired)}))
            return
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        typer.echo(f"scheduler {scheduler.name} running; SIGTERM or Ctrl-C stops it")
        try:
            scheduler.run(stop.is_set, interval_seconds=interval_seconds)
        except PushError as e:
            fail(str(e))
