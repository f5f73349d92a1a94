"""The `pushpilot` command line. Settings are read once here and passed down."""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer

from pipeline.config import Settings
from pipeline.datadir import PRIVATE_UMASK, private_dir
from pipeline.errors import PushError
from pipeline.redis_server import redis_url_for, stop_embedded
from serving import cli_models
from serving.cli_common import fail as _fail
from serving.cli_common import redis_client as _redis
from serving.cli_common import settings as _settings

__all__ = ["main", "cli"]

cli = typer.Typer(
    name="pushpilot",
    help="Multi-tenant targeting and push pipeline.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
tenant_cli = typer.Typer(help="Create tenants and their API keys.", no_args_is_help=True)
key_cli = typer.Typer(help="API keys of a tenant.", no_args_is_help=True)
data_cli = typer.Typer(help="Sample data.", no_args_is_help=True)
cli.add_typer(tenant_cli, name="tenant")
tenant_cli.add_typer(key_cli, name="key")
cli.add_typer(data_cli, name="data")

# Command groups that live in their own modules. Add one line per group here, nothing else.
# --- command groups ---
cli.add_typer(cli_models.app, name="model")
cli.add_typer(importlib.import_module("serving.cli_alerts").app, name="alerts")
cli.add_typer(importlib.import_module("serving.cli_anomaly").app, name="anomaly")
cli.add_typer(importlib.import_module("serving.cli_privacy").app, name="privacy")
cli.add_typer(importlib.import_module("serving.cli_users").app, name="user")
cli.add_typer(importlib.import_module("serving.cli_users").topics_app, name="topic")
cli.add_typer(importlib.import_module("serving.cli_compliance").app, name="compliance")
cli.add_typer(importlib.import_module("serving.cli_incidents").app, name="incident")
cli.add_typer(importlib.import_module("serving.cli_keys").app, name="keys")
cli.add_typer(importlib.import_module("serving.cli_bench").app, name="bench")
importlib.import_module("serving.cli_bench_serve")  # adds `bench serve` to the bench group
cli.add_typer(importlib.import_module("serving.cli_gateway").app, name="gateway")
importlib.import_module("serving.cli_backup").register(cli)  # top-level backup, restore
importlib.import_module("serving.cli_campaigns").register(cli)  # campaign, scheduler
# --- end of command groups ---

log = logging.getLogger("pushpilot")


def _setup_logging(settings: Settings) -> None:
    private_dir(settings.data_dir)
    private_dir(settings.log_dir)
    handler = logging.FileHandler(settings.log_dir / "pushpilot.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    for noisy in ("mlflow", "alembic", "urllib3", "httpx", "presidio-analyzer", "ray"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@cli.callback()
def _main() -> None:
    """Read settings once (PUSHPILOT_* variables, PUSHPILOT_CONFIG or ./pushpilot.toml)."""
    try:
        settings = _settings()
    except (ValueError, FileNotFoundError) as e:
        _fail(f"bad settings: {e}")
    _setup_logging(settings)


# --- tenants -------------------------------------------------------------------------------


@tenant_cli.command("create")
def tenant_create(name: Annotated[str, typer.Argument(help="Tenant id: a-z, 0-9, '_' and '-'.")]) -> None:
    """Create a tenant with its own secret."""
    from pipeline import audit, tenants

    with _redis() as r:
        tenants.create_tenant(r, name)  # type: ignore[arg-type]
        audit.record(r, name, audit.cli_actor(), "tenant.created", f"tenant:{name}")  # type: ignore[arg-type]
    typer.echo(f"created tenant {name}")


@tenant_cli.command("list")
def tenant_list() -> None:
    """List tenants."""
    from pipeline import tenants

    with _redis() as r:
        for name in tenants.list_tenants(r):  # type: ignore[arg-type]
            typer.echo(name)


@key_cli.command("create")
def key_create(
    name: Annotated[str, typer.Argument(help="Tenant id.")],
    scopes: Annotated[str, typer.Option(help="Comma-separated: events:write,score,push:send,campaigns:write,models:write,consent,admin")] = "score,push:send",
    expires_days: Annotated[float, typer.Option(help="Days the key is valid (at most 3650).")] = 90,
) -> None:
    """Create an API key; it is shown once and stored hashed."""
    from pipeline import audit, tenants

    wanted = [s.strip() for s in scopes.split(",") if s.strip()]
    with _redis() as r:
        key = tenants.create_api_key(r, name, wanted, expires_days=expires_days,  # type: ignore[arg-type]
                                     actor=audit.cli_actor())
    typer.echo(key)
    typer.echo("store this key now: it is not shown again", err=True)


@key_cli.command("list")
def key_list(name: Annotated[str, typer.Argument(help="Tenant id.")]) -> None:
    """One JSON line per key: id, scopes, created, expiry, state (never the key itself)."""
    from pipeline import tenants

    with _redis() as r:
        for record in tenants.list_api_keys(r, name):  # type: ignore[arg-type]
            typer.echo(json.dumps(record, sort_keys=True))


@key_cli.command("rotate")
def key_rotate(
    name: Annotated[str, typer.Argument(help="Tenant id.")],
    key_id: Annotated[str, typer.Argument(help="The key's id, from `tenant key list`.")],
    grace_hours: Annotated[float, typer.Option(min=0, max=720, help="Hours the old key stays valid.")] = 24,
    expires_days: Annotated[float, typer.Option(help="Days the new key is valid.")] = 90,
) -> None:
    """A new key with the old one's scopes; the old one works until the grace period ends."""
    from pipeline import audit, tenants

    with _redis() as r:
        key, old_expires = tenants.rotate_api_key(
            r, name, key_id, grace_seconds=grace_hours * 3600,  # type: ignore[arg-type]
            expires_days=expires_days, actor=audit.cli_actor())
    typer.echo(key)
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(old_expires))
    typer.echo(f"store this key now: it is not shown again; key {key_id} stays valid until "
               f"{until}", err=True)


@key_cli.command("revoke")
def key_revoke(
    name: Annotated[str, typer.Argument(help="Tenant id.")],
    key_id: Annotated[str, typer.Argument(help="The key's id, from `tenant key list`.")],
) -> None:
    """Refuse a key from now on (every API replica within half a second)."""
    from pipeline import audit, tenants

    with _redis() as r:
        tenants.revoke_api_key(r, name, key_id, actor=audit.cli_actor())  # type: ignore[arg-type]
    typer.echo(json.dumps({"key_id": key_id, "state": "revoked"}))


@cli.command("audit")
def audit_show(
    tenant: Annotated[str, typer.Option(help="Tenant id.")],
    since: Annotated[float | None, typer.Option(help="Only entries from this epoch second on.")] = None,
    action: Annotated[str | None, typer.Option(help="An action or its prefix, e.g. key or key.revoked.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
) -> None:
    """The tenant's audit trail, oldest first: one JSON line per entry (time, actor, action)."""
    from pipeline import audit, tenants

    with _redis() as r:
        tenants.get_tenant(r, tenant)
        for entry in audit.read(r, tenant, since=since, action=action, limit=limit):
            typer.echo(json.dumps(entry.as_dict(), sort_keys=True))


@tenant_cli.command("token")
def user_token(
    name: Annotated[str, typer.Argument(help="Tenant id.")],
    user: Annotated[str, typer.Option(help="User id the token opens the inbox of.")],
    ttl_seconds: Annotated[int, typer.Option(min=60)] = 3600,
) -> None:
    """Issue a user token for the realtime inbox (what the tenant's backend gives its app).

    The user id is screened as the API screens it: a PII-shaped id is refused, or under the
    policy's `user_ids: pseudonymize` the token opens the inbox of its pseudonym (stderr says so).
    """
    from pipeline import tenants
    from pipeline.privacy import tenant_policy
    from pipeline.privacy.edge import EdgeScreen

    with _redis() as r:
        secret = tenants.tenant_secret(r, name)  # type: ignore[arg-type]
        policy = tenant_policy(r, name)
    stored = EdgeScreen().user_id(user, policy, secret, "--user")
    if stored != user:
        typer.echo(f"the user id holds personal data; the token opens the inbox of {stored}",
                   err=True)
    typer.echo(tenants.issue_user_token(secret, name, stored, ttl_seconds))


# --- data ----------------------------------------------------------------------------------


@data_cli.command("generate")
def data_generate(
    tenant: Annotated[str, typer.Option(help="Tenant id the data is for.")],
    users: Annotated[int, typer.Option(min=10)] = 2000,
    days: Annotated[int, typer.Option(min=8)] = 28,
    seed: Annotated[int, typer.Option()] = 0,
    out: Annotated[Path | None, typer.Option(help="Folder; default data/generated/<tenant>.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="csv or parquet")] = "csv",
) -> None:
    """Generate behaviour events and PII-laden profiles for a tenant (with hidden ground truth)."""
    from pipeline import keys
    from pipeline.generator import generate_tenant, write_tenant

    try:
        keys.validate_tenant_id(tenant)
    except ValueError as e:
        _fail(f"--tenant: {e}")
    if fmt not in ("csv", "parquet"):
        _fail(f"--format must be csv or parquet, got {fmt!r}")
    data = generate_tenant(tenant, users=users, days=days, seed=seed)
    paths = write_tenant(data, out or Path("data") / "generated" / tenant, fmt=fmt)
    typer.echo(json.dumps({"tenant": tenant, "events": len(data.events), "users": len(data.profiles),
                           "cutoff": data.cutoff.isoformat(),
                           "files": {k: str(v) for k, v in paths.items()}}))


@data_cli.command("load")
def data_load(
    file: Annotated[Path, typer.Argument(help="Events: CSV, JSON Lines or Parquet with user_id, event_time, event_type[, value][, event_id].")],
    tenant: Annotated[str, typer.Option(help="Tenant id the events are for.")],
    replace: Annotated[bool, typer.Option(help="First drop the tenant's online features of another layout.")] = False,
) -> None:
    """Store a tenant's events and fill its online features, so /v1/score by user id works.

    Every row is checked first; a bad one stops the load, naming its line, before anything is
    written. Loading the same file again within two days stores nothing twice.
    """
    from tqdm import tqdm

    from pipeline import tenants
    from pipeline.eventload import load_events, read_event_file
    from pipeline.featurestore import clear_features

    with _redis() as r:
        tenants.get_tenant(r, tenant)  # type: ignore[arg-type]
        events = read_event_file(file)
        if replace:
            clear_features(r, tenant)  # type: ignore[arg-type]
        # A bar only on a terminal: tqdm(disable=None) stays quiet when stderr is a file.
        with tqdm(total=len(events), desc="events", unit="event", disable=None) as stored, \
                tqdm(total=None, desc="users", unit="user", disable=None) as refreshed:
            result = load_events(r, tenant, events,  # type: ignore[arg-type]
                                 on_stored=stored.update, on_refreshed=refreshed.update)
    typer.echo(json.dumps({
        "tenant": tenant, "events": result.events, "accepted": result.accepted,
        "duplicates": result.duplicates, "users": result.users,
        "features_as_of": None if result.features_as_of is None else result.features_as_of.isoformat(),
    }))


# --- services ------------------------------------------------------------------------------


@cli.command("serve")
def serve_cmd() -> None:
    """Run the HTTP API and realtime gateway on Ray Serve until interrupted."""
    from serving.app import start_ray, start_serve, stop_serve
    from serving.args import ServingArgs

    settings = _settings()
    with redis_url_for(settings.redis_url, settings.data_dir, tls=settings.embedded_tls, is_admin=False) as url:
        try:
            start_ray(settings)
            # SIGTERM as Ctrl-C, set after ray.init: Ray's own handler killed the process
            # without shutting Ray down, and its agents kept running.
            signal.signal(signal.SIGTERM, signal.default_int_handler)
            start_serve(settings, ServingArgs.from_settings(settings, url))
            typer.echo(f"pushpilot serving on {settings.http_url} (docs at {settings.http_url}/docs)")
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        finally:
            stop_serve()


@cli.command("worker")
def worker_cmd(
    name: Annotated[str | None, typer.Option(help="Consumer name; default host-pid.")] = None,
    drain: Annotated[bool, typer.Option(help="Deliver what is queued, then exit.")] = False,
    refresh_seconds: Annotated[float, typer.Option(
        min=0.1, help="How often tenants and plans are read again.")] = 5.0,
) -> None:
    """Deliver for every tenant, a hard-isolated one as its own ACL user; SIGTERM drains."""
    import socket

    from pipeline.atrest import sealer_for
    from pipeline.redis_server import connect
    from serving.workers import WorkerPool

    settings = _settings()
    consumer = name or f"{socket.gethostname()}-{os.getpid()}"
    # Delivery runs as the least-privilege user; only hard-isolated tenants' ACL users need the
    # admin.
    with redis_url_for(settings.redis_url, settings.data_dir, tls=settings.embedded_tls) as admin_url, \
            redis_url_for(settings.redis_url, settings.data_dir, tls=settings.embedded_tls, is_admin=False) as url, \
            connect(url) as r, connect(admin_url) as acl_admin:
        pool = WorkerPool(r, url, consumer=consumer, refresh_seconds=refresh_seconds,
                          inbox_max_len=settings.inbox_max_len, acl_admin=acl_admin,
                          sealer=sealer_for(settings.at_rest_key_path,
                                            seals=settings.encrypt_at_rest))
        try:
            if drain:
                typer.echo(json.dumps({"delivered": pool.drain()}))
                return
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            signal.signal(signal.SIGINT, lambda *_: stop.set())
            pool.start()
            typer.echo(f"worker {consumer} delivering, {len(pool.isolated_workers)} tenant(s) "
                       "isolated; SIGTERM or Ctrl-C drains and stops")
            pool.run(stop)
        finally:
            pool.close()


@cli.command("down")
def down_cmd() -> None:
    """Stop the embedded Valkey server of this data directory, whoever still uses it."""
    settings = _settings()
    if settings.redis_url:
        _fail("PUSHPILOT_REDIS_URL is set: that Redis is not ours to stop")
    stopped = stop_embedded(settings.data_dir)
    typer.echo("stopped the embedded Valkey" if stopped else "no embedded Valkey was running")


@cli.command("demo")
def demo_cmd(
    users: Annotated[int, typer.Option(min=200, help="Users per tenant.")] = 2000,
    days: Annotated[int, typer.Option(min=14)] = 28,
    top_k: Annotated[int, typer.Option(min=1, help="Pushes per tenant.")] = 100,
) -> None:
    """Two tenants end to end: generate, anonymise, train, serve, score, select, deliver."""
    from serving.demo import report_json, run_demo

    report = run_demo(_settings(), users=users, days=days, top_k=top_k, echo=typer.echo)
    typer.echo(report_json(report))


def main() -> None:
    # What the CLI and everything it starts (Valkey, Ray, MLflow, backups) write is the user's only.
    os.umask(PRIVATE_UMASK)
    started = time.monotonic()
    try:
        cli()
    except PushError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except (ValueError, FileNotFoundError, IsADirectoryError) as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    finally:
        log.debug("command took %.1fs", time.monotonic() - started)


if __name__ == "__main__":
    main()
