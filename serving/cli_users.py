"""`pushpilot user ...`: a user's consent, as the tenant records it (docs/consent.md)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from serving.cli_common import fail, redis_client, settings

__all__ = ["app", "topics_app"]

app = typer.Typer(help="A user's consent and preferences.", no_args_is_help=True)


def _stored_user(r, tenant: str, user: str) -> str:  # type: ignore[no-untyped-def]
    """The id as the API stores it: a PII-shaped one refused, or its pseudonym (stderr says so)."""
    from pipeline import tenants
    from pipeline.privacy import tenant_policy
    from pipeline.privacy.edge import EdgeScreen

    tenants.get_tenant(r, tenant)
    stored = EdgeScreen().user_id(user, tenant_policy(r, tenant), tenants.tenant_secret(r, tenant), "--user")
    if stored != user:
        typer.echo(f"the user id holds personal data; its pseudonym {stored} is used", err=True)
    return stored


@app.command("preferences")
def show(
    tenant: Annotated[str, typer.Option(help="Tenant id.")],
    user: Annotated[str, typer.Option(help="User id.")],
) -> None:
    """Print the user's consent per purpose and every change recorded, as JSON."""
    from pipeline.consent import preferences

    with redis_client() as r:
        typer.echo(json.dumps(preferences(r, tenant, _stored_user(r, tenant, user)).as_json()))


@app.command("consent")
def record(
    tenant: Annotated[str, typer.Option(help="Tenant id.")],
    user: Annotated[str, typer.Option(help="User id.")],
    set_: Annotated[list[str], typer.Option("--set", help="PURPOSE=STATUS, e.g. marketing=revoked; repeatable. Purposes: marketing, profiling, transactional, topic:NAME, channel:inbox|webhook; statuses: granted, denied, revoked.")],
    policy_version: Annotated[str, typer.Option(help="Version of the privacy policy the user agreed to or refused.")],
    source: Annotated[str, typer.Option(help="Where the change came from.")] = "cli",
) -> None:
    """Record consent changes for a user; prints the preferences after them as JSON.

    Everything is checked first: a bad purpose or status changes nothing. A revocation stops
    the user's queued pushes of that purpose.
    """
    from pipeline.consent import record_consent

    changes: dict[str, str] = {}
    for item in set_:
        purpose, sep, status = item.partition("=")
        if not sep or not purpose.strip() or not status.strip():
            fail(f"--set: expected PURPOSE=STATUS, got {item!r}")
        if purpose.strip() in changes:
            fail(f"--set: {purpose.strip()!r} given twice")
        changes[purpose.strip()] = status.strip()
    with redis_client() as r:
        stored = _stored_user(r, tenant, user)
        prefs = record_consent(r, tenant, stored, changes, source=source, policy_version=policy_version)
    typer.echo(json.dumps(prefs.as_json()))


@app.command("export")
def export(
    tenant: Annotated[str, typer.Option(help="Tenant id.")],
    user: Annotated[str, typer.Option(help="User id.")],
) -> None:
    """Print everything held about the user as JSON (a data-subject access request).

    Exits 2 when nothing is held (or the user was erased). The export is audited.
    """
    from pipeline.atrest import sealer_for
    from pipeline.audit import cli_actor
    from pipeline.subjects import export_user

    with redis_client() as r:
        body = export_user(r, tenant, _stored_user(r, tenant, user), actor=cli_actor(),
                           sealer=sealer_for(settings().at_rest_key_path))  # opens only
    if body is None:
        fail(f"no data held about user {user!r} in tenant {tenant!r}")
    typer.echo(json.dumps(body, default=str))


@app.command("erase")
def erase(
    tenant: Annotated[str, typer.Option(help="Tenant id.")],
    user: Annotated[str, typer.Option(help="User id.")],
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: an erasure cannot be undone.")] = False,
) -> None:
    """Erase everything held about the user (a data-subject erasure request); prints what was
    removed and what remains elsewhere (backups, trained models) as JSON. Audited."""
    from pipeline.audit import cli_actor
    from pipeline.subjects import erase_user

    if not yes:
        fail("an erasure cannot be undone; add --yes to go ahead")
    with redis_client() as r:
        report = erase_user(r, tenant, _stored_user(r, tenant, user), actor=cli_actor())
    typer.echo(json.dumps(report.as_json()))


topics_app = typer.Typer(help="The tenant's topics, which users may refuse marketing on.",
                         no_args_is_help=True)


@topics_app.command("create")
def create_topic(
    tenant: Annotated[str, typer.Option(help="Tenant id.")],
    name: Annotated[str, typer.Option(help="Topic name: a-z 0-9 _ -, e.g. sales or order-updates.")],
    required: Annotated[bool, typer.Option("--required", help="Users cannot unsubscribe (order updates, security notices).")] = False,
    description: Annotated[str, typer.Option(help="What the topic's pushes are about.")] = "",
) -> None:
    """Create or change a topic; prints it as JSON."""
    from dataclasses import asdict

    from pipeline import audit, consent

    with redis_client() as r:
        topic = consent.create_topic(r, tenant, name, kind="required" if required else "optional",
                                     description=description)
        audit.record(r, tenant, audit.cli_actor(), "topic.set", f"topic:{topic.name}", kind=topic.kind)
    typer.echo(json.dumps(asdict(topic)))


@topics_app.command("list")
def list_topics(tenant: Annotated[str, typer.Option(help="Tenant id.")]) -> None:
    """Print the tenant's topics as JSON."""
    from dataclasses import asdict

    from pipeline import consent, tenants

    with redis_client() as r:
        tenants.get_tenant(r, tenant)
        typer.echo(json.dumps({"tenant_id": tenant, "topics": [asdict(t) for t in consent.list_topics(r, tenant)]}))
