"""`pushpilot model ...`: train, inspect and promote tenants' models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer

from serving.cli_common import fail, redis_client, settings

__all__ = ["app"]

app = typer.Typer(help="Tenants' models.", no_args_is_help=True)


@app.command("train")
def model_train(
    tenant: Annotated[str, typer.Option(help="Tenant id.")],
    events: Annotated[Path, typer.Option(help="Events file: user_id,event_time,event_type[,value].")],
    cutoff: Annotated[str, typer.Option(help="Features use events up to this time (ISO date).")],
    horizon: Annotated[int, typer.Option(min=1, help="Label window after the cutoff, in days.")] = 7,
    target_event: Annotated[str, typer.Option()] = "purchase",
    force: Annotated[bool, typer.Option(help="Promote even if it does not beat the champion.")] = False,
) -> None:
    """Train a tenant's propensity model from raw events and register it in MLflow."""
    from models.registry import ModelRegistry
    from pipeline import tenants
    from pipeline.generator import read_events
    from pipeline.training import train_propensity

    try:
        cutoff_at = pd.Timestamp(cutoff)
    except ValueError:
        fail(f"--cutoff: cannot read {cutoff!r} as a date")
    cutoff_at = cutoff_at.tz_localize("UTC") if cutoff_at.tzinfo is None else cutoff_at.tz_convert("UTC")
    current = settings()
    with redis_client() as r:
        tenants.get_tenant(r, tenant)
    frame = read_events(events)
    registry = ModelRegistry(current.mlflow_tracking_uri, current.mlflow_artifact_root)
    result = train_propensity(tenant, frame, cutoff=cutoff_at, horizon_days=horizon,
                              registry=registry, target_event=target_event, force=force)
    typer.echo(json.dumps({
        "tenant": tenant, "kind": "propensity", "version": result.version.version,
        "metrics": {k: round(v, 4) for k, v in result.metrics.items()},
        "champion": result.version.is_champion,
    }))
