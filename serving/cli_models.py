"""`pushpilot model ...`: train, inspect, promote and batch-score tenants' models."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import pandas as pd
import typer

from serving.cli_common import fail, redis_client, settings

if TYPE_CHECKING:
    from models.registry import ModelRegistry

__all__ = ["app"]

app = typer.Typer(help="Tenants' models.", no_args_is_help=True)

_OUT_SUFFIXES = (".csv", ".parquet", ".pq")
# Below this many rows one process scores faster than starting Ray (~10-15 s) would save.
_RAY_THRESHOLD = 200_000


def _known_tenant(tenant: str) -> None:
    """Raise UnknownTenantError (exit 2) before anything is read or written."""
    from pipeline import tenants

    with redis_client() as r:
        tenants.get_tenant(r, tenant)


def _excluded(tenant: str, user_ids: pd.Series) -> set[str]:
    """The users of ``user_ids`` whose data may not be learnt from (profiling consent taken
    back, or erased); stderr says how many. A file's id is matched as given and as the API
    stores it (a PII-shaped id under its pseudonym), since consent is recorded under the latter."""
    from pipeline import tenants
    from pipeline.errors import InvalidInputError
    from pipeline.privacy import tenant_policy
    from pipeline.privacy.edge import EdgeScreen
    from pipeline.subjects import excluded_from_learning

    given = user_ids.astype(str).unique().tolist()
    screen = EdgeScreen()
    with redis_client() as r:
        policy, secret = tenant_policy(r, tenant), tenants.tenant_secret(r, tenant)
        stored = {}
        for user in given:
            try:
                stored[user] = screen.user_id(user, policy, secret, "user_id")
            except InvalidInputError:  # an id the API refuses was never stored in another form
                stored[user] = user
        held = excluded_from_learning(r, tenant, [*given, *(s for u, s in stored.items() if s != u)])
    out = {user for user in given if user in held or stored[user] in held}
    if out:
        typer.echo(f"left out {len(out)} users who took back profiling consent or were erased",
                   err=True)
    return out


def _registry() -> ModelRegistry:
    from models.registry import ModelRegistry

    current = settings()
    return ModelRegistry(current.mlflow_tracking_uri, current.mlflow_artifact_root)


def _utc(value: str, option: str) -> pd.Timestamp:
    try:
        stamp = pd.Timestamp(value)
    except ValueError:
        fail(f"{option}: cannot read {value!r} as a date")
    if stamp is pd.NaT:
        fail(f"{option}: cannot read {value!r} as a date")
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _rounded(metrics: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in metrics.items()}


def _echo_choice(roc_auc: float, learner: str, how: str, cv: dict[str, float],
                 baselines: dict[str, float], calibration: dict[str, float] | None = None,
                 calibrated: str = "none") -> None:
    """The chosen learner's held-out ROC AUC, the candidates' CV and the baselines, on stderr."""
    typer.echo(f"{'held-out roc_auc':<34} {roc_auc:.4f}  {learner} (chosen by {how})", err=True)
    for name, value in sorted(cv.items()):
        typer.echo(f"{'  cv ' + name:<34} {value:.4f}", err=True)
    for name, value in baselines.items():
        typer.echo(f"{'  baseline ' + name + ', same hold-out':<34} {value:.4f}", err=True)
    if calibration:
        typer.echo(f"{'calibration, CV Brier':<34} " + ", ".join(
            f"{name} {value:.5f}" for name, value in calibration.items())
            + f"  (kept: {calibrated})", err=True)


def _echo_uplift(metrics: dict[str, float], learner: str, how: str, cv: dict[str, float],
                 baselines: dict[str, float]) -> None:
    """The chosen uplift learners' held-out Qini AUC and uplift at 30%, the candidates' CV Qini
    and the baselines' on the same hold-out, on stderr (several arms: the mean over arms)."""
    typer.echo(f"{'':<40} {'qini_auc':>8} {'uplift@30%':>10}", err=True)
    typer.echo(f"{'held-out, ours':<40} {metrics['qini_auc']:>8.4f} {metrics['uplift_at_30pct']:>10.4f}"
               f"  {learner} (chosen by {how})", err=True)
    for name, value in sorted(cv.items()):
        typer.echo(f"{'  cv ' + name:<40} {value:>8.4f}", err=True)
    for name in baselines:
        typer.echo(f"{'  baseline ' + name + ', same hold-out':<40} "
                   f"{metrics[f'baseline_qini_auc_{name}']:>8.4f} "
                   f"{metrics[f'baseline_uplift_at_30pct_{name}']:>10.4f}", err=True)


@app.command("train")
def model_train(
    tenant: Annotated[str, typer.Option(help="Tenant id.")],
    table: Annotated[Path | None, typer.Option(help="Labelled table: CSV (any separator) or Parquet.")] = None,
    label: Annotated[str | None, typer.Option(help="Label column of --table.")] = None,
    positive: Annotated[str | None, typer.Option(help="Label value that counts as a response; inferred for yes/no, true/false, 1/0.")] = None,
    drop: Annotated[list[str] | None, typer.Option(help="Column of --table to leave out; repeat for more.")] = None,
    sep: Annotated[str | None, typer.Option(help="CSV separator; sniffed when not given.")] = None,
    treatment: Annotated[str | None, typer.Option(help="Arm column of a randomised campaign log: trains an uplift model.")] = None,
    control: Annotated[str | None, typer.Option(help="Value of --treatment for the control group.")] = None,
    events: Annotated[Path | None, typer.Option(help="Events file: user_id,event_time,event_type[,value].")] = None,
    cutoff: Annotated[str | None, typer.Option(help="With --events: features use events up to this time (ISO date).")] = None,
    horizon: Annotated[int, typer.Option(min=1, help="With --events: label window after the cutoff, in days.")] = 7,
    target_event: Annotated[str, typer.Option(help="With --events: the event the label waits for.")] = "purchase",
    threads: Annotated[int, typer.Option(min=1, help="OpenMP threads; 1 is fastest on a busy host.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the hold-out split and the learner.")] = 0,
    force: Annotated[bool, typer.Option(help="Promote even if it does not beat the champion or the best baseline.")] = False,
    cv_folds: Annotated[int, typer.Option(min=2, max=20, help="With --table: folds of the cross-validation that picks the learner.")] = 5,
) -> None:
    """Train a tenant's model from a labelled table or from raw events, and register it.

    Prints one JSON line: tenant, kind, version, held-out metrics and whether it became champion;
    from a table also the candidates' cross-validated score (ROC AUC; Qini AUC with
    --treatment, per arm) and the baselines' on the same hold-out (a table of them on stderr).
    """
    if (table is None) == (events is None):
        fail("give exactly one of --table FILE or --events FILE")
    if table is not None:
        if label is None:
            fail("--label: name the label column of --table")
        if cutoff is not None:
            fail("--cutoff applies to --events only")
        if (treatment is None) != (control is None):
            fail("--treatment and --control go together: the arm column and its control value")
        _known_tenant(tenant)
        from pipeline.tabular import read_table, train_table

        frame = read_table(table, sep)
        if "user_id" in frame.columns and (refused := _excluded(tenant, frame["user_id"])):
            frame = frame[~frame["user_id"].astype(str).isin(refused)].reset_index(drop=True)
        started = time.perf_counter()
        result = train_table(tenant, frame, label=label, registry=_registry(), positive=positive,
                             drop=drop or (), treatment=treatment, control=control,
                             random_state=seed, n_threads=threads, force=force, cv_folds=cv_folds)
        how = f"{cv_folds}-fold CV on the training rows"
        if result.baselines and treatment is not None:
            _echo_uplift(result.metrics, result.learner,
                         how.replace("CV", "CV Qini") + ", simplest within one standard error",
                         result.cv_scores, result.baselines)
        elif result.baselines:
            _echo_choice(result.metrics["roc_auc"], result.learner, how, result.cv_scores,
                         result.baselines, {k.removeprefix("cv_brier_"): v for k, v in
                                            result.metrics.items() if k.startswith("cv_brier_")},
                         result.calibration)
        typer.echo(json.dumps({
            "tenant": tenant, "kind": result.kind, "version": result.version.version,
            "metrics": _rounded(result.metrics), "champion": result.version.is_champion,
            "learner": result.learner, "calibration": result.calibration,
            "n_train": result.n_train, "n_holdout": result.n_holdout,
            "dropped": list(drop or ()), "identifier_columns": result.dropped_identifiers,
            "fit_seconds": round(result.fit_seconds, 2),
            "seconds": round(time.perf_counter() - started, 2),
            "baselines": _rounded(result.baselines), "cv": _rounded(result.cv_scores),
        }))
        return

    assert events is not None
    if cutoff is None:
        fail("--cutoff: training from --events needs the cutoff date")
    if label or treatment or drop:
        fail("--label, --drop and --treatment apply to --table only")
    cutoff_at = _utc(cutoff, "--cutoff")
    _known_tenant(tenant)
    from pipeline.generator import read_events
    from pipeline.training import train_propensity

    frame = read_events(events)
    refused = _excluded(tenant, frame["user_id"])
    excluded = pd.Index(sorted(refused), name="user_id")
    result_events = train_propensity(tenant, frame, cutoff=cutoff_at, horizon_days=horizon,
                                     registry=_registry(), target_event=target_event, force=force,
                                     exclude_users=excluded if refused else None)
    _echo_choice(result_events.metrics["roc_auc"], result_events.learner,
                 "5-fold CV on the training users", result_events.cv_scores, result_events.baselines)
    typer.echo(json.dumps({
        "tenant": tenant, "kind": "propensity", "version": result_events.version.version,
        "metrics": _rounded(result_events.metrics), "champion": result_events.version.is_champion,
        "learner": result_events.learner, "baselines": _rounded(result_events.baselines),
        "cv": _rounded(result_events.cv_scores),
        "n_train": result_events.n_train, "n_holdout": result_events.n_holdout,
    }))


@app.command("eval")
def model_eval(
    events: Annotated[Path, typer.Option(help="Events file: user_id,event_time,event_type[,value].")],
    cutoff: Annotated[str, typer.Option(help="Features and histories use events up to this time (ISO date).")],
    horizon: Annotated[int, typer.Option(min=1, help="Label window after the cutoff, in days.")] = 7,
    target_event: Annotated[str, typer.Option(help="The event the label waits for.")] = "purchase",
    seed: Annotated[int, typer.Option(help="Seed of the user hold-out split and the learner.")] = 0,
) -> None:
    """"Buys again within the horizon": ROC AUC of what `model train --events` fits, beside RFM
    logistic regression and BG/NBD, on the same held-out users. Registers nothing."""
    from pipeline.generator import read_events
    from pipeline.training import evaluate_repeat

    cutoff_at = _utc(cutoff, "--cutoff")
    if not events.is_file():
        fail(f"--events: {events} is not a file")
    result = evaluate_repeat(read_events(events), cutoff=cutoff_at, horizon_days=horizon,
                             target_event=target_event, random_state=seed)
    typer.echo(f"{result.n_train} training / {result.n_holdout} held-out users; "
               f"{result.positive_rate:.1%} {target_event} within {horizon} days of {cutoff}", err=True)
    for name, value in result.roc_auc.items():
        typer.echo(f"{name:<30} ROC AUC {value:.4f}", err=True)
    typer.echo(json.dumps({"eval": "repeat", "roc_auc": _rounded(result.roc_auc),
                           "bgnbd": _rounded(result.bgnbd_params), "n_train": result.n_train,
                           "n_holdout": result.n_holdout, "positive_rate": round(result.positive_rate, 4),
                           "horizon_days": horizon, "cutoff": cutoff}))


@app.command("eval-send-time")
def model_eval_send_time(
    users: Annotated[int, typer.Option(min=50, help="Users per generated scenario.")] = 2000,
    days: Annotated[int, typer.Option(min=8, help="Days of history per scenario.")] = 28,
    seeds: Annotated[list[int] | None, typer.Option("--seed", help="Scenario seed; repeat for more (default 0, 1, 2).")] = None,
) -> None:
    """Send-time optimisation against known best hours: on generated tenants whose users each
    have a hidden preferred hour, the hit rate of the hour we pick beside "the tenant's most
    common hour" and a fixed 19h. Registers nothing."""
    from pipeline.sendtime import evaluate_send_time

    result = evaluate_send_time(users=users, days=days, seeds=seeds or (0, 1, 2))
    typer.echo(f"{len(result.seeds)} scenarios x {users} users, {days} days; "
               f"{result.fallback_share:.1%} of people have under 5 sessions and opens", err=True)
    typer.echo(f"{'':<30} {'exact':>7} {'within 1h':>10}", err=True)
    for name, value in result.hit_rate.items():
        typer.echo(f"{name:<30} {value:>7.3f} {result.hit_rate_1h[name]:>10.3f}", err=True)
    typer.echo(json.dumps({"eval": "send_time", "hit_rate": _rounded(result.hit_rate),
                           "hit_rate_1h": _rounded(result.hit_rate_1h), "users": users,
                           "days": days, "seeds": result.seeds,
                           "fallback_share": round(result.fallback_share, 4)}))


@app.command("eval-uplift")
def model_eval_uplift(
    users: Annotated[int, typer.Option(min=500, help="Users per generated campaign log.")] = 4000,
    seeds: Annotated[list[int] | None, typer.Option("--seed", help="Scenario seed; repeat for more (default 2, 3).")] = None,
    treated_shares: Annotated[list[float] | None, typer.Option("--treated-share", help="Share of users pushed; repeat for more (default 0.5, 0.2).")] = None,
    cv_folds: Annotated[int, typer.Option(min=2, max=20, help="Folds of the CV Qini that picks our learner.")] = 5,
    threads: Annotated[int | None, typer.Option(min=1, help="OpenMP threads of the boosted learners.")] = 1,
) -> None:
    """Uplift targeting against the truth: on generated randomised campaigns whose users' true
    uplift is known, what pushing the top 30% really gains with our model, with each candidate
    learner alone, and with the baselines (logistic class transformation, a boosted T-learner,
    propensity, random). Registers nothing."""
    from pipeline.uplifteval import evaluate_uplift

    result = evaluate_uplift(users=users, seeds=seeds or (2, 3),
                             treated_shares=treated_shares or (0.5, 0.2), cv_folds=cv_folds,
                             n_threads=threads)
    typer.echo(f"{len(result.per_log)} logs x {users} users (seeds {result.seeds}, treated share "
               f"{result.treated_shares}); 30% held out; true uplift of each ranking's top "
               f"{result.top:.0%}", err=True)
    for name, value in result.true_uplift.items():
        typer.echo(f"{name:<34} {value:>7.4f}", err=True)
    typer.echo(f"{'ours chose':<34} " + ", ".join(result.chosen), err=True)
    typer.echo(json.dumps({"eval": "uplift", "true_uplift_top": _rounded(result.true_uplift),
                           "top": result.top, "chosen": result.chosen, "users": users,
                           "seeds": result.seeds, "treated_shares": result.treated_shares}))


def _kinds_with_version(registry: ModelRegistry, tenant: str, version: int) -> list[str]:
    return [kind for kind in registry.kinds(tenant)
            if any(v.version == version for v in registry.list_versions(tenant, kind))]


def _resolve_kind(registry: ModelRegistry, tenant: str, version: int, kind: str | None) -> str:
    if kind is not None:
        return kind
    kinds = _kinds_with_version(registry, tenant, version)
    if not kinds:
        fail(f"--version: tenant {tenant!r} has no model version {version}; "
             f"see `pushpilot model list --tenant {tenant}`")
    if len(kinds) > 1:
        fail(f"--version: tenant {tenant!r} has version {version} of {kinds}; say which with --kind")
    return kinds[0]


@app.command("list")
def model_list(
    tenant: Annotated[str, typer.Option(help="Tenant id.")],
    kind: Annotated[str | None, typer.Option(help="Only this kind (propensity, table, uplift).")] = None,
) -> None:
    """List a tenant's model versions, one JSON line each, oldest first."""
    _known_tenant(tenant)
    registry = _registry()
    for each in [kind] if kind else registry.kinds(tenant):
        for info in registry.list_versions(tenant, each):
            typer.echo(json.dumps({
                "tenant": tenant, "kind": each, "version": info.version,
                "champion": info.is_champion, "metrics": _rounded(info.metrics),
            }))


@app.command("show")
def model_show(
    tenant: Annotated[str, typer.Option(help="Tenant id.")],
    version: Annotated[int, typer.Option(min=1, help="Version number.")],
    kind: Annotated[str | None, typer.Option(help="Kind; needed only when several kinds have this version.")] = None,
) -> None:
    """Show one version: metrics, parameters, promotion decision, run id."""
    _known_tenant(tenant)
    registry = _registry()
    chosen = _resolve_kind(registry, tenant, version, kind)
    try:
        detail = registry.describe_version(tenant, chosen, version)
    except LookupError as e:
        fail(f"--version: {e}")
    detail["metrics"] = _rounded(detail["metrics"])
    typer.echo(json.dumps(detail))


@app.command("promote")
def model_promote(
    tenant: Annotated[str, typer.Option(help="Tenant id.")],
    version: Annotated[int, typer.Option(min=1, help="Version to make champion.")],
    kind: Annotated[str | None, typer.Option(help="Kind; needed only when several kinds have this version.")] = None,
) -> None:
    """Make a version the tenant's champion, whatever its metrics."""
    _known_tenant(tenant)
    registry = _registry()
    chosen = _resolve_kind(registry, tenant, version, kind)
    previous = registry.champion_version(tenant, chosen)
    try:
        registry.promote(tenant, chosen, version)
    except LookupError as e:
        fail(f"--version: {e}")
    typer.echo(json.dumps({"tenant": tenant, "kind": chosen, "champion": version,
                           "previous_champion": previous}))


def _write(frame: pd.DataFrame, out: Path) -> None:
    """Write next to ``out`` and rename, so a failure leaves no half-written file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    if out.suffix.lower() == ".csv":
        frame.to_csv(partial, index=False)
    else:
        frame.to_parquet(partial, index=False)
    os.replace(partial, out)


def _score(model: Any, frame: pd.DataFrame, score: Callable[[Any, pd.DataFrame], pd.DataFrame],
           on_ray: bool, partition_rows: int | None) -> pd.DataFrame:
    """``score(model, frame)`` here, or fanned out over Ray (started here, stopped after)."""
    if not on_ray:
        return score(model, frame)
    import ray

    from pipeline.tabular import PARTITION_ROWS, score_partitioned
    from serving.app import start_ray

    started_here = not ray.is_initialized()
    start_ray(settings())
    try:
        return score_partitioned(model, frame, score, partition_rows=partition_rows or PARTITION_ROWS)
    finally:
        if started_here:
            ray.shutdown()


def _is_worth_ray(rows: int, threshold: int) -> bool:
    """Fan out only onto a cluster: on one small machine Ray's start-up and copies cost more
    than they save (1M rows on 2 cores: 31 s in one process, 48 s on a fresh local Ray)."""
    return settings().ray_address is not None and rows > threshold


@app.command("score")
def model_score(
    tenant: Annotated[str, typer.Option(help="Tenant id.")],
    out: Annotated[Path, typer.Option(help="Output file, .csv or .parquet.")],
    table: Annotated[Path | None, typer.Option(help="Table to score with the 'table' (or --kind uplift) champion.")] = None,
    events: Annotated[Path | None, typer.Option(help="Events to score with the 'propensity' champion.")] = None,
    cutoff: Annotated[str | None, typer.Option(help="With --events: features use events up to this time.")] = None,
    sep: Annotated[str | None, typer.Option(help="CSV separator of --table; sniffed when not given.")] = None,
    kind: Annotated[str | None, typer.Option(help="Model kind; default table for --table, propensity for --events.")] = None,
    keep: Annotated[list[str] | None, typer.Option(help="Column of --table copied to the output (an id); repeat for more.")] = None,
    use_ray: Annotated[bool | None, typer.Option("--ray/--no-ray", help="Force scoring on Ray, or in this process; by default Ray above --ray-threshold rows when PUSHPILOT_RAY_ADDRESS names a cluster.")] = None,
    ray_threshold: Annotated[int, typer.Option(min=1, help="Rows above which scoring fans out over Ray.")] = _RAY_THRESHOLD,
    partition_rows: Annotated[int | None, typer.Option(min=1, help="Rows per Ray task; default 50,000.")] = None,
) -> None:
    """Score every row of a table, or every user active before the cutoff, with the champion.

    Inputs above --ray-threshold rows are split into partitions scored as Ray tasks (the local
    Ray, or the cluster PUSHPILOT_RAY_ADDRESS names); the output is the same row for row.
    """
    from pipeline.errors import InvalidInputError, NoModelError

    if (table is None) == (events is None):
        fail("give exactly one of --table FILE or --events FILE")
    if out.suffix.lower() not in _OUT_SUFFIXES:
        fail(f"--out: unsupported file type {out.suffix or '(none)'!r}; use .csv or .parquet")
    if events is not None and cutoff is None:
        fail("--cutoff: scoring --events needs the cutoff date")
    cutoff_at = _utc(cutoff, "--cutoff") if cutoff is not None else None
    chosen = kind or ("table" if table is not None else "propensity")
    _known_tenant(tenant)
    try:
        model, version = _registry().load_champion(tenant, chosen)
    except LookupError as e:
        raise NoModelError(tenant, chosen) from e

    scored: pd.DataFrame
    if table is not None:
        from pipeline.tabular import read_table, score_table

        frame = read_table(table, sep)
        missing = [c for c in keep or () if c not in frame.columns]
        if missing:
            raise InvalidInputError("keep", f"no column {missing[0]!r} in the table; found {list(frame.columns)}")
        on_ray = use_ray if use_ray is not None else _is_worth_ray(len(frame), ray_threshold)
        started = time.perf_counter()
        scores = _score(model, frame, score_table, on_ray, partition_rows)
        score_seconds = time.perf_counter() - started
        scored = pd.concat([pd.DataFrame({"row": range(len(frame))}),
                            frame[list(keep or ())].reset_index(drop=True),
                            scores.reset_index(drop=True)], axis=1)
    else:
        from pipeline.features import FEATURE_COLUMNS, build_features
        from pipeline.generator import read_events

        assert events is not None and cutoff_at is not None
        features = build_features(read_events(events), cutoff_at)[list(FEATURE_COLUMNS)]
        if features.empty:
            raise InvalidInputError("cutoff", f"no user has events at or before {cutoff_at.isoformat()}")
        from pipeline.tabular import score_proba

        on_ray = use_ray if use_ray is not None else _is_worth_ray(len(features), ray_threshold)
        started = time.perf_counter()
        p = _score(model, features, score_proba, on_ray, partition_rows)["score"].to_numpy()
        score_seconds = time.perf_counter() - started
        scored = pd.DataFrame({"user_id": features.index.to_numpy(), "score": p})
    _write(scored, out)
    typer.echo(json.dumps({"tenant": tenant, "kind": chosen, "version": version,
                           "rows": len(scored), "out": str(out), "ray": on_ray,
                           "score_seconds": round(score_seconds, 2)}))
