"""`pushpilot bench serve`, added to the `bench` command group."""

from __future__ import annotations

import json
from typing import Annotated

import pandas as pd
import typer

from pipeline.localhost import free_port
from pipeline.redis_server import connect, redis_url_for
from serving.cli_bench import app
from serving.cli_common import settings

__all__ = ["bench_serve_cmd"]

_TENANT = "bench-serve"


@app.command("serve")
def bench_serve_cmd(
    seconds: Annotated[float, typer.Option(min=1.0, help="Seconds per scenario.")] = 5.0,
    users: Annotated[int, typer.Option(min=600, help="Users of the bench tenant.")] = 2000,
) -> None:
    """Score requests of 1 and 500 users at 1 and 16 clients, against ours and plain FastAPI."""
    from models.registry import ModelRegistry
    from pipeline import tenants
    from pipeline.featurestore import load_features
    from pipeline.generator import generate_tenant
    from serving.app import start_serve, stop_serve
    from serving.args import ServingArgs
    from serving.bench_serve import bench_serve
    from serving.demo import prepare_tenant

    current = settings()
    registry = ModelRegistry(current.mlflow_tracking_uri, current.mlflow_artifact_root)
    with redis_url_for(current.redis_url, current.data_dir, tls=current.embedded_tls) as redis_url:
        r = connect(redis_url)
        if not tenants.tenant_exists(r, _TENANT):
            tenants.create_tenant(r, _TENANT, plan=tenants.Plan(requests_per_second=1_000_000))
        typer.echo(f"preparing tenant {_TENANT} ({users} users) ...")
        data = generate_tenant(_TENANT, users=users, days=28, seed=5)
        prepare_tenant(r, registry, data)
        user_ids = list(data.profiles["user_id"].astype(str))
        model, _ = registry.load_champion(_TENANT, "propensity")
        features = load_features(r, _TENANT, user_ids[:500])
        typer.echo("starting Ray Serve ...")
        try:
            start_serve(current, ServingArgs.from_settings(current, redis_url))
            summary = bench_serve(
                current.http_url, lambda: tenants.create_api_key(r, _TENANT, ["score"]), user_ids, plain_port=free_port(),
                redis_url=redis_url, tracking_uri=current.mlflow_tracking_uri,
                artifact_root=str(current.mlflow_artifact_root), tenant_id=_TENANT,
                model=model, features=pd.DataFrame(features), seconds=seconds, echo=typer.echo,
            )
        finally:
            stop_serve()
    typer.echo(json.dumps(summary, sort_keys=True))
