"""`pushpilot privacy ...`: find and anonymise personal data in tables and free text."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer

from serving.cli_common import fail, redis_client

__all__ = ["app"]

app = typer.Typer(help="Personal data: scan, anonymise, analyse; tenants' policies.", no_args_is_help=True)
policy_app = typer.Typer(help="A tenant's privacy policy (entity type -> operator).", no_args_is_help=True)
app.add_typer(policy_app, name="policy")

_CSV_SUFFIXES = (".csv", ".tsv", ".txt")
_PARQUET_SUFFIXES = (".parquet", ".pq")
_LANGUAGES = ("en", "zh")

SpacyModel = Annotated[
    str | None,
    typer.Option(help="spaCy NER model: an installed package name or a folder; default: an installed one, if any."),
]


def _analyzer(spacy_model: str | None):  # type: ignore[no-untyped-def]
    from pipeline.privacy import build_analyzer, ner_languages

    analyzer = build_analyzer(spacy_model)
    if not ner_languages(analyzer):
        typer.echo("note: no spaCy NER model installed; PERSON and LOCATION in free text come "
                   "from patterns and column names only", err=True)
    return analyzer


def _read_table(path: Path) -> pd.DataFrame:
    from pipeline.generator import read_profiles

    return read_profiles(path)


def _check_out(out: Path, suffixes: tuple[str, ...]) -> None:
    if out.suffix.lower() not in suffixes:
        fail(f"--out: {out.name} must end in {', '.join(suffixes)}")
    if not out.parent.is_dir():
        fail(f"--out: folder {out.parent} does not exist")


def _write_atomically(out: Path, write: Any) -> None:
    """Write to a temporary sibling, then rename: a failure leaves no half-written file."""
    partial = out.with_name(f".{out.name}.partial")
    try:
        write(partial)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)


@app.command("scan")
def scan(
    tenant: Annotated[str, typer.Option(help="Tenant id.")],
    table: Annotated[Path, typer.Option(help="CSV or Parquet table with a user_id column.")],
    spacy_model: SpacyModel = None,
) -> None:
    """Which columns hold which personal data, and how many values; never the values (JSON)."""
    from pipeline import tenants
    from pipeline.privacy import scan_table

    with redis_client() as r:
        tenants.get_tenant(r, tenant)
    frame = _read_table(table)
    report = scan_table(frame, _analyzer(spacy_model))
    typer.echo(json.dumps({"tenant": tenant, "rows": len(frame), "columns": report}, ensure_ascii=False))


@app.command("anonymize")
def anonymize(
    tenant: Annotated[str, typer.Option(help="Tenant id; its secret keys the pseudonyms.")],
    table: Annotated[Path, typer.Option(help="CSV or Parquet table with a user_id column.")],
    out: Annotated[Path, typer.Option(help="Where the anonymised table goes (.csv or .parquet).")],
    policy: Annotated[Path | None, typer.Option(help="YAML/JSON policy; default: the tenant's stored policy, else the default.")] = None,
    spacy_model: SpacyModel = None,
) -> None:
    """Anonymise a table per policy; prints the audit counts (never values)."""
    from pipeline import tenants
    from pipeline.privacy import PrivacyPolicy, anonymize_table, record_audit, tenant_policy

    _check_out(out, _CSV_SUFFIXES + _PARQUET_SUFFIXES)
    chosen = PrivacyPolicy.from_file(policy) if policy is not None else None
    frame = _read_table(table)
    with redis_client() as r:
        tenants.get_tenant(r, tenant)
        secret = tenants.tenant_secret(r, tenant)
        chosen = chosen or tenant_policy(r, tenant)
        safe, audit = anonymize_table(frame, secret, chosen, analyzer=_analyzer(spacy_model))
        if out.suffix.lower() in _PARQUET_SUFFIXES:
            _write_atomically(out, lambda p: safe.to_parquet(p, index=False))
        else:
            _write_atomically(out, lambda p: safe.to_csv(p, index=False))
        record_audit(r, tenant, audit, source="cli privacy anonymize", rows=len(frame))
    typer.echo(json.dumps({"tenant": tenant, "rows": len(frame), "columns_out": list(map(str, safe.columns)),
                           "audit": audit.to_dict()}))


def _read_jsonl(path: Path) -> list[tuple[object, str, str]]:
    if not path.is_file():
        fail(f"--input: no such file: {path}")
    rows: list[tuple[object, str, str]] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        fail(f"--input: {path.name} is not UTF-8 text: {e.reason}")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            fail(f"--input: line {number}: not valid JSON: {e.msg}")
        if not isinstance(item, dict):
            fail(f"--input: line {number}: expected an object with id, text and language")
        if "id" not in item or isinstance(item["id"], (dict, list)) or item["id"] is None:
            fail(f"--input: line {number}: id is missing or not a string or number")
        if not isinstance(item.get("text"), str):
            fail(f"--input: line {number}: text is missing or not a string")
        language = item.get("language", "en")
        if language not in _LANGUAGES:
            fail(f"--input: line {number}: language must be one of {', '.join(_LANGUAGES)}, got {language!r}")
        rows.append((item["id"], item["text"], language))
    if not rows:
        fail(f"--input: {path.name} has no lines")
    return rows


@app.command("analyze")
def analyze(
    input_path: Annotated[Path, typer.Option("--input", help='JSONL: {"id", "text", "language": "en"|"zh"} per line.')],
    out: Annotated[Path, typer.Option(help='JSONL: {"id", "entities": [{"type", "start", "end", "score"}]} per line.')],
    workers: Annotated[int, typer.Option(min=1, help="Processes analysing in parallel.")] = 1,
    spacy_model: SpacyModel = None,
) -> None:
    """Find personal data in free text; writes entity spans per line, never the text."""
    from tqdm import tqdm

    from pipeline.privacy import TextAnalyzerPool
    from pipeline.privacy.text import find_entities_batch

    _check_out(out, (".jsonl",))
    rows = _read_jsonl(input_path)
    spans_by_row: list[list[Any]] = [[] for _ in rows]
    for language in _LANGUAGES:
        picked = [i for i, (_, _, lang) in enumerate(rows) if lang == language]
        if not picked:
            continue
        texts = [rows[i][1] for i in picked]
        if workers > 1:
            with TextAnalyzerPool(workers, spacy_model=spacy_model) as pool:
                found = pool.find_entities(texts, language)
        else:  # spaCy over batches, not text by text; same spans (tests/test_privacy.py)
            analyzer = _analyzer(spacy_model)
            with tqdm(total=len(texts), desc=f"analyze {language}", unit="text", disable=None) as bar:
                found = find_entities_batch(texts, analyzer, language, progress=bar.update)
        for i, spans in zip(picked, found, strict=True):
            spans_by_row[i] = spans
    counts: Counter[str] = Counter()
    lines = []
    for (row_id, _, _), spans in zip(rows, spans_by_row, strict=True):
        counts.update(s.entity_type for s in spans)
        entities = [{"type": s.entity_type, "start": s.start, "end": s.end, "score": round(s.score, 4)}
                    for s in spans]
        lines.append(json.dumps({"id": row_id, "entities": entities}, ensure_ascii=False))
    _write_atomically(out, lambda p: p.write_text("\n".join(lines) + "\n", encoding="utf-8"))
    typer.echo(json.dumps({"lines": len(rows), "entities": dict(sorted(counts.items())), "out": str(out)}))


@policy_app.command("set")
def policy_set(
    tenant: Annotated[str, typer.Option(help="Tenant id.")],
    file: Annotated[Path, typer.Option(help="YAML/JSON: {operators: {ENTITY: operator}, default_operator: op}.")],
) -> None:
    """Store the tenant's policy; its later privacy runs use it."""
    from pipeline import audit
    from pipeline.privacy import PrivacyPolicy, save_policy

    policy = PrivacyPolicy.from_file(file)
    with redis_client() as r:
        save_policy(r, tenant, policy)
        audit.record(r, tenant, audit.cli_actor(), "privacy.policy.set", policy=policy.to_dict())
    typer.echo(json.dumps({"tenant": tenant, "policy": policy.to_dict()}, sort_keys=True))


@policy_app.command("show")
def policy_show(tenant: Annotated[str, typer.Option(help="Tenant id.")]) -> None:
    """The tenant's policy (JSON); `stored` is false when the default applies."""
    from pipeline import tenants
    from pipeline.privacy import PrivacyPolicy, load_policy

    with redis_client() as r:
        tenants.get_tenant(r, tenant)
        stored = load_policy(r, tenant)
    policy = stored or PrivacyPolicy.default()
    typer.echo(json.dumps({"tenant": tenant, "stored": stored is not None, "policy": policy.to_dict()},
                          sort_keys=True))


@app.command("audit")
def audit(
    tenant: Annotated[str, typer.Option(help="Tenant id.")],
    count: Annotated[int, typer.Option(min=1, max=1000)] = 10,
) -> None:
    """The tenant's latest privacy runs: counts per column and entity type (JSON lines)."""
    from pipeline import tenants
    from pipeline.privacy import recent_audits

    with redis_client() as r:
        tenants.get_tenant(r, tenant)
        for entry in recent_audits(r, tenant, count):
            typer.echo(json.dumps(entry, sort_keys=True))


@app.command("corpus")
def corpus(
    out: Annotated[Path, typer.Option(help="JSONL to write: {text, spans: [[start, end, label]], source} per line.")],
    texts: Annotated[int, typer.Option(min=1, max=1_000_000, help="How many texts.")] = 1500,
    seed: Annotated[int, typer.Option(min=0, help="Same seed, same texts.")] = 0,
) -> None:
    """Labelled English texts with personal data (Faker values in our own templates)."""
    from pipeline.privacy.corpus_en import english_texts

    _check_out(out, (".jsonl",))
    items = english_texts(seed, texts)
    lines = [json.dumps({"text": i.text, "spans": [list(s) for s in i.spans], "source": i.source},
                        ensure_ascii=False) for i in items]
    _write_atomically(out, lambda p: p.write_text("\n".join(lines) + "\n", encoding="utf-8"))
    labels = Counter(label for i in items for _, _, label in i.spans)
    typer.echo(json.dumps({"texts": len(items), "spans": dict(sorted(labels.items())), "out": str(out)}))


@app.command("eval")
def evaluate(
    input_path: Annotated[Path | None, typer.Option("--input", help="Labelled JSONL (as `privacy corpus` writes); default: generated texts.")] = None,
    texts: Annotated[int, typer.Option(min=1, max=100_000, help="Generated texts, without --input.")] = 1500,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the generated texts.")] = 1,
    spacy_model: SpacyModel = None,
    language: Annotated[str, typer.Option(help="en: labelled English texts, untyped F2; zh: labelled Chinese paragraphs, recall per type.")] = "en",
) -> None:
    """Token-level untyped precision, recall and F2 of our analyzer beside Presidio as it ships
    (same spaCy model) and Presidio's patterns alone; then one JSON line. `--language zh`:
    recall per type on generated Chinese paragraphs, beside Presidio's patterns."""
    from tqdm import tqdm

    if language not in ("en", "zh"):
        fail(f"--language: {language!r} is not one of en, zh")
    if language == "zh":
        if input_path is not None:
            fail("--input: only English labelled files are read; --language zh generates its paragraphs")
        _evaluate_chinese(texts, seed)
        return

    from pipeline.privacy import build_analyzer, ner_languages
    from pipeline.privacy.corpus_en import english_texts
    from pipeline.privacy.evaluate import (
        analyzer_detector,
        presidio_stock,
        pushpilot_detector,
        read_labelled,
        score_detector,
    )

    if input_path is not None:
        if not input_path.is_file():
            fail(f"--input: {input_path} is not a file")
        try:
            items = read_labelled(input_path.read_text(encoding="utf-8").splitlines())
        except ValueError as e:
            fail(f"--input: {input_path.name}: {e}")
        if not items:
            fail(f"--input: {input_path.name} has no lines")
        where = str(input_path)
    else:
        items = english_texts(seed, texts)
        where = f"english_texts(seed={seed}, n={texts})"
    ours = build_analyzer(spacy_model, languages=("en",))
    model_name = ours.nlp_engine.models[0]["model_name"] if ner_languages(ours) else None
    candidates = {"pushpilot": lambda bar: pushpilot_detector(ours, bar.update),
                  "pushpilot, NER off": lambda bar: pushpilot_detector(build_analyzer("", ("en",)), bar.update),
                  "presidio patterns": lambda bar: analyzer_detector(presidio_stock(None), bar.update)}
    if model_name:
        candidates["presidio + spaCy"] = lambda bar: analyzer_detector(presidio_stock(model_name), bar.update)
    else:
        typer.echo("note: no spaCy model installed; the stock Presidio + spaCy baseline is left out", err=True)
    scores = {}
    for name, make in candidates.items():
        with tqdm(total=len(items), desc=name, unit="text", disable=None) as bar:
            scores[name] = score_detector(items, make(bar))
    typer.echo(f"{len(items)} labelled texts from {where}; spaCy model: {model_name or 'none'}")
    typer.echo(f"{'detector':<20} {'precision':>9} {'recall':>7} {'F2':>6} {'worst source F2':>16} {'flagged in clean texts':>23}")
    for name, s in scores.items():
        typer.echo(f"{name:<20} {s.precision:>9.3f} {s.recall:>7.3f} {s.f2:>6.3f} {s.worst_source_f2():>16.3f} {s.clean_false_positives():>23}")
    best = scores["pushpilot"]
    typer.echo("pushpilot F2 by source: " + ", ".join(f"{k} {v:.3f}" for k, v in best.f2_by_source().items()))
    typer.echo("pushpilot recall by label: " + ", ".join(f"{k} {v:.2f}" for k, v in best.recall_by_label.items()))
    typer.echo(json.dumps({
        "eval": "privacy", "texts": len(items), "input": where, "spacy_model": model_name,
        "detectors": {name: {"precision": round(s.precision, 4), "recall": round(s.recall, 4),
                             "f2": round(s.f2, 4), "clean_false_positives": s.clean_false_positives(),
                             "f2_by_source": {k: round(v, 4) for k, v in s.f2_by_source().items()}}
                      for name, s in scores.items()},
        "recall_by_label": {k: round(v, 4) for k, v in best.recall_by_label.items()},
    }, sort_keys=True))


def _evaluate_chinese(texts: int, seed: int) -> None:
    from tqdm import tqdm

    from pipeline.privacy import build_analyzer
    from pipeline.privacy.corpus_zh import chinese_paragraphs
    from pipeline.privacy.evaluate import presidio_stock, score_typed
    from pipeline.privacy.text import find_entities, pattern_entity_types

    paragraphs = chinese_paragraphs(seed, texts)
    ours = build_analyzer()
    types = pattern_entity_types(ours, "zh")  # names and places are not labelled in these
    stock = presidio_stock(None)
    predictors = {
        "pushpilot": lambda t: [(s.entity_type, s.start, s.end) for s in find_entities(t, ours, "zh")
                                if s.entity_type in types],
        "presidio patterns": lambda t: [(r.entity_type, r.start, r.end) for r in stock.analyze(text=t, language="en")],
    }
    scores = {}
    for name, predict in predictors.items():
        with tqdm(total=len(paragraphs), desc=name, unit="text", disable=None) as bar:
            scores[name] = score_typed(paragraphs, predict, bar.update)
    ours_score, stock_score = scores["pushpilot"], scores["presidio patterns"]
    typer.echo(f"{len(paragraphs)} labelled Chinese paragraphs from chinese_paragraphs(seed={seed}, n={texts})")
    typer.echo(f"{'type':<28} {'gold':>5} {'pushpilot':>10} {'presidio patterns':>18}")
    for kind, n in sorted(ours_score.gold.items()):
        typer.echo(f"{kind:<28} {n:>5} {ours_score.recall()[kind]:>10.3f} {stock_score.recall()[kind]:>18.3f}")
    typer.echo(f"{'precision (spans)':<28} {'':>5} {ours_score.precision:>10.3f} {stock_score.precision:>18.3f}")
    typer.echo(json.dumps({
        "eval": "privacy", "language": "zh", "texts": len(paragraphs), "seed": seed,
        "detectors": {name: {"recall": {k: round(v, 4) for k, v in sc.recall().items()},
                             "precision": round(sc.precision, 4)} for name, sc in scores.items()},
        "gold": dict(sorted(ours_score.gold.items())),
    }, sort_keys=True))
