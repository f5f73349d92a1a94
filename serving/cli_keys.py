"""`pushpilot keys ...`: the data keys that encrypt tenants' push messages at rest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from serving.cli_common import fail, redis_client, settings

__all__ = ["app"]

app = typer.Typer(help="Encryption at rest: tenants' data keys and the master key wrapping them.",
                  no_args_is_help=True)


def _master():  # type: ignore[no-untyped-def]
    from pipeline.atrest import load_or_create_master_key

    path = settings().at_rest_key_path
    if path is None:
        fail("encryption at rest is off (encrypt_at_rest = false); nothing to manage")
    return load_or_create_master_key(path)


@app.command("show")
def keys_show(tenant: Annotated[str, typer.Option(help="Tenant id.")]) -> None:
    """The tenant's data key versions, the current one, and which master keys wrap each."""
    from pipeline import atrest, tenants

    master = _master()
    with redis_client() as r:
        tenants.get_tenant(r, tenant)
        found = atrest.key_versions(r, tenant)
    typer.echo(json.dumps({"tenant": tenant, "master_key_id": master.key_id, **found}))


@app.command("rotate")
def keys_rotate(tenant: Annotated[str, typer.Option(help="Tenant id.")]) -> None:
    """A new data key for the tenant's new messages; older messages still open. No downtime:
    running processes switch within seconds."""
    from pipeline import atrest, audit

    master = _master()
    with redis_client() as r:
        version = atrest.rotate_data_key(r, master, tenant, actor=audit.cli_actor())
    typer.echo(json.dumps({"tenant": tenant, "current": version}))


@app.command("rewrap")
def keys_rewrap(
    new_key_file: Annotated[Path, typer.Option(help="The new master key (made 0600 if absent).")],
    tenant: Annotated[list[str] | None, typer.Option(help="Tenant id; repeatable. Default: every tenant.")] = None,
    drop_old: Annotated[bool, typer.Option("--drop-old", help="Remove the other master keys' wrappings (once every process has the new key).")] = False,
) -> None:
    """Wrap tenants' data keys under a new master key, beside the current one: move processes
    to the new file one by one, then run again with --drop-old."""
    from pipeline import atrest, audit, tenants

    old = _master()
    new = atrest.load_or_create_master_key(new_key_file)
    with redis_client() as r:
        chosen = tenant or tenants.list_tenants(r)
        for tenant_id in chosen:
            tenants.get_tenant(r, tenant_id)
        done = {t: atrest.rewrap(r, old, new, t, actor=audit.cli_actor(), drop_others=drop_old)
                for t in chosen}
    typer.echo(json.dumps({"old_master_key_id": old.key_id, "new_master_key_id": new.key_id,
                           "versions_rewrapped": done, "dropped_old": drop_old}))
