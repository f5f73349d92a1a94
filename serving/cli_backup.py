"""`pushpilot backup` and `pushpilot restore`: a tenant's whole state in one verified archive."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from serving.cli_common import fail, redis_client, settings

__all__ = ["register", "backup_cmd", "restore_cmd"]


def register(cli: typer.Typer) -> None:
    """Add `backup` and `restore` as top-level commands of ``cli``."""
    cli.command("backup")(backup_cmd)
    cli.command("restore")(restore_cmd)


def _registry():  # type: ignore[no-untyped-def]
    from models.registry import ModelRegistry

    current = settings()
    return ModelRegistry(current.mlflow_tracking_uri, current.mlflow_artifact_root)


_KEY_FILE_HELP = ("HMAC key that signs (backup) and verifies (restore) archives; "
                  "default <data dir>/backup.key (PUSHPILOT_BACKUP_KEY_FILE).")


def backup_cmd(
    out: Annotated[Path, typer.Option("--out", help="Archive to write (.tar.gz).")],
    tenant: Annotated[list[str] | None, typer.Option("--tenant", help="Tenant id; repeat for several.")] = None,
    all_tenants: Annotated[bool, typer.Option("--all", help="Every tenant.")] = False,
    key_file: Annotated[Path | None, typer.Option("--key-file", help=_KEY_FILE_HELP)] = None,
) -> None:
    """Back up tenants' Redis state, MLflow models, policy and settings into one signed archive."""
    from pipeline import tenants as tenants_mod
    from pipeline.backup import BackupError, backup, load_or_create_key

    if bool(tenant) == all_tenants:
        fail("give --tenant T (repeatable) or --all, not both and not neither")
    try:
        key, is_new = load_or_create_key(key_file or settings().backup_key_path)
    except BackupError as e:
        fail(str(e))
    if is_new:
        typer.echo(f"created the backup key {key.path} (0600, key id {key.key_id}); keep a copy "
                   "off this machine: a restore needs it, and whoever has it can sign archives",
                   err=True)
    with redis_client() as r:
        chosen = tenants_mod.list_tenants(r) if all_tenants else list(tenant or [])
        if not chosen:
            fail("--all: there are no tenants to back up")
        try:
            report = backup(r, _registry(), chosen, out, key=key)
        except BackupError as e:
            fail(str(e))
    typer.echo(json.dumps({"archive": str(report.path), "sha256": report.sha256,
                           "key_id": key.key_id, "tenants": report.tenants}))


def restore_cmd(
    archive: Annotated[Path, typer.Option("--in", help="Archive written by `pushpilot backup`.")],
    tenant: Annotated[list[str] | None, typer.Option("--tenant", help="Tenant of the archive to restore; repeat for several. Nothing of any other tenant is written.")] = None,
    as_tenant: Annotated[str | None, typer.Option("--as", help="Restore the one --tenant under this new id.")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Overwrite a tenant that exists here.")] = False,
    key_file: Annotated[Path | None, typer.Option("--key-file", help=_KEY_FILE_HELP)] = None,
) -> None:
    """Restore tenants of a signed archive (signature, checksums and tenancy checked first)."""
    from pipeline.backup import BackupError, BackupKey, restore

    if not tenant:
        fail("name the tenant(s) of the archive to restore: --tenant T (repeatable); restore "
             "writes nothing that is not theirs")
    try:
        key = BackupKey.load(key_file or settings().backup_key_path)
    except BackupError as e:
        fail(str(e))
    with redis_client() as r:
        try:
            report = restore(r, _registry(), archive, key=key, tenant_ids=tenant,
                             as_tenant_id=as_tenant, is_replacing=replace)
        except BackupError as e:
            fail(str(e))
    typer.echo(json.dumps({"tenants": report.tenants, "keys": report.keys,
                           "model_versions": report.model_versions,
                           "api_keys_dropped": report.api_keys_dropped}))
    if report.api_keys_dropped:
        typer.echo(f"{report.api_keys_dropped} API key(s) stay with the original tenant; "
                   "create new ones with `pushpilot tenant key create`", err=True)
