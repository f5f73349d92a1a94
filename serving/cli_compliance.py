"""`pushpilot compliance report`: what a tenant holds, keeps and was asked for (docs/consent.md)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from serving.cli_common import redis_client, settings

__all__ = ["app"]

app = typer.Typer(help="Compliance: a tenant's data, retention, consent and requests.", no_args_is_help=True)


@app.command("report")
def report(tenant: Annotated[str, typer.Option(help="Tenant id.")]) -> None:
    """Print the tenant's compliance report as JSON: data held (counts), retention, consent
    coverage and policy versions, exports and erasures. Counts only, never a user id."""
    from pipeline.compliance import compliance_report

    with redis_client() as r:
        body = compliance_report(r, tenant, inbox_max_len=settings().inbox_max_len)
    typer.echo(json.dumps(body))
