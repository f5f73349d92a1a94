"""`pushpilot anomaly ...`: score a series causally, and score detectors with NAB's method."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import typer

from serving.cli_common import fail

__all__ = ["app", "read_series"]

app = typer.Typer(help="Streaming anomaly detectors and their NAB evaluation.", no_args_is_help=True)
# Spelled out rather than read from models.streaming, which this module imports only when a
# command runs; tests/test_cli_anomaly.py checks the two agree.
_DETECTOR_HELP = ("tail-rank (default), seasonal-artime, seasonal-likelihood, artime or "
                 "windowed-gaussian.")


def read_series(path: Path) -> pd.DataFrame:
    """A NAB-format series (``timestamp,value``), or a clear error naming what is wrong."""
    if not path.is_file():
        fail(f"{path}: no such file; give a CSV with columns timestamp,value")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        fail(f"{path}: cannot read it as CSV ({e}); expected columns timestamp,value")
    missing = [c for c in ("timestamp", "value") if c not in frame.columns]
    if missing:
        fail(f"{path}: column {missing[0]!r} is missing; found {list(frame.columns)}, "
             "expected timestamp,value")
    times = pd.to_datetime(frame["timestamp"], errors="coerce")
    if times.isna().any():
        row = int(np.flatnonzero(times.isna().to_numpy())[0])
        fail(f"{path}: row {row + 2} has timestamp {frame['timestamp'].iloc[row]!r}, which is not "
             "a time; use ISO times like 2014-04-01 00:05:00")
    values = pd.to_numeric(frame["value"], errors="coerce")
    if values.isna().any() or not np.isfinite(values.to_numpy(dtype=float)).all():
        row = int(np.flatnonzero(~np.isfinite(values.to_numpy(dtype=float)))[0])
        fail(f"{path}: row {row + 2} has value {frame['value'].iloc[row]!r}, which is not a "
             "finite number")
    return frame.assign(timestamp=times, value=values.astype(float))


def _detector(name: str, option: str = "--detector"):  # type: ignore[no-untyped-def]
    from models.streaming import make_detector

    try:
        return make_detector(name)
    except ValueError as e:
        fail(f"{option}: {e}")


@app.command("detect")
def detect(
    input_path: Annotated[Path, typer.Option("--input", help="CSV with columns timestamp,value.")],
    out: Annotated[Path, typer.Option(help="Where to write the series with anomaly_score.")],
    detector: Annotated[str, typer.Option(help=_DETECTOR_HELP)] = "tail-rank",
) -> None:
    """Score every row using only the rows before it; write timestamp,value,anomaly_score."""
    model = _detector(detector)
    frame = read_series(input_path)
    original = pd.read_csv(input_path, usecols=["timestamp"])["timestamp"]
    scores = model.score(frame["timestamp"], frame["value"])
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"timestamp": original, "value": frame["value"],
                  "anomaly_score": np.round(scores, 6)}).to_csv(out, index=False)
    typer.echo(json.dumps({"rows": len(frame), "detector": detector, "out": str(out),
                           "max_score": round(float(scores.max()) if len(scores) else 0.0, 6)}))


def _scored(name: str, frame: pd.DataFrame, harness: bool):  # type: ignore[no-untyped-def]
    from models.nab import probationary_length
    from models.streaming import NabHarness, with_harness

    model = _detector(name)
    if harness:
        model = with_harness(model, NabHarness.of(frame["value"], probationary_length(len(frame))))
    return model.score(frame["timestamp"], frame["value"])


@app.command("eval")
def evaluate(
    data: Annotated[Path, typer.Option(help="Folder holding <category>/<file>.csv series.")],
    windows: Annotated[Path, typer.Option(help="NAB windows JSON: file -> [[start, end], ...].")],
    detector: Annotated[str, typer.Option(help="Our detector: " + _DETECTOR_HELP)] = "tail-rank",
    baseline: Annotated[list[str] | None, typer.Option(
        help="Detectors scored beside ours in the same run (repeat the option); default "
             "windowed-gaussian (NAB's baseline) and seasonal-artime (our previous default).")] = None,
    nab_harness: Annotated[bool, typer.Option(
        "--nab-harness", help="Also score every detector with what NAB's harness gives published "
                              "detectors (the file's min/max and probation length), reported "
                              "apart as '<name>+harness'; look-ahead, so not what the guard runs.")] = False,
) -> None:
    """NAB standard-profile scores of our detector and the baselines, in-sample and left out.

    In-sample: one threshold optimised over the whole corpus, as NAB reports. Left out: each
    category scored at the threshold optimised on the other categories (each file on the others
    when there is one category), which is the score to expect on unseen series.
    """
    from tqdm import tqdm

    from models.nab import label_series, left_out_score, read_windows, score_corpus

    if not data.is_dir():
        fail(f"--data {data}: no such folder; give the folder holding <category>/<file>.csv")
    if not windows.is_file():
        fail(f"--windows {windows}: no such file; give NAB's windows JSON "
             '({"<category>/<file>.csv": [[start, end], ...]})')
    try:
        labelled_windows = read_windows(windows)
    except ValueError as e:
        fail(f"--windows: {e}")
    if not labelled_windows:
        fail(f"--windows {windows}: lists no files")
    baselines = baseline if baseline is not None else ["windowed-gaussian", "seasonal-artime"]
    names = [detector, *[b for b in dict.fromkeys(baselines) if b != detector]]
    for name in names:  # an unknown name fails before any work
        _detector(name, "--detector" if name == detector else "--baseline")
    modes = [(name, False) for name in names] + ([(name, True) for name in names] if nab_harness else [])
    started = time.monotonic()
    frames = {}
    for file_name in sorted(labelled_windows):
        frames[file_name] = read_series(data / file_name)
        if frames[file_name].empty:
            fail(f"{data / file_name}: has no rows; NAB scores a series with labelled rows")
    corpora: dict[str, dict] = {}  # type: ignore[type-arg]
    # A bar only on a terminal: tqdm(disable=None) stays quiet when stderr is a file.
    with tqdm(total=len(frames) * len(modes), desc="scoring", unit="file", disable=None) as bar:
        for file_name, frame in frames.items():
            try:
                labelled = label_series(file_name, frame["timestamp"], labelled_windows[file_name])
            except ValueError as e:
                fail(f"--windows: {e}")
            for name, harness in modes:
                key = f"{name}+harness" if harness else name
                corpora.setdefault(key, {})[file_name] = (labelled, _scored(name, frame, harness))
                bar.update()
    try:
        in_sample = {key: score_corpus(corpus) for key, corpus in corpora.items()}
    except ValueError as e:
        fail(str(e))
    try:
        left_out = {key: left_out_score(corpus) for key, corpus in corpora.items()}
    except ValueError as e:  # one file: nothing to leave out, but the in-sample score stands
        typer.echo(f"left out: not scored ({e})", err=True)
        left_out = {}
    results = {key: (score, left_out.get(key)) for key, score in in_sample.items()}
    ours = results[detector][0]
    for file in ours.files:
        stamps = corpora[detector][file.name][0].timestamps
        shown = ", ".join(str(stamps[i]) for i in file.detections[:10])
        more = f" (+{len(file.detections) - 10} more)" if len(file.detections) > 10 else ""
        typer.echo(f"{file.name}: raw={file.raw:.3f} tp={file.true_positives} "
                   f"fn={file.false_negatives} fp={file.false_positives} "
                   f"detections=[{shown}]{more}")
    typer.echo(_table(results))
    summary: dict[str, object] = {
        "profile": "standard",
        "files": len(labelled_windows),
        "windows": int(round(ours.perfect)),
        "seconds": round(time.monotonic() - started, 1),
        "detector": detector,
    }
    for key, (score, held_out) in results.items():
        summary[key] = {
            "score": round(score.score, 2),
            "left_out": round(held_out.score, 2) if held_out else None,
            "left_out_by": held_out.grouped_by if held_out else None,
            "threshold": round(score.threshold, 6),
            "raw": round(score.raw, 3),
            "by_category": {k: round(v, 2) for k, v in score.by_prefix().items()},
            "left_out_by_group": ({k: round(v, 2) for k, v in held_out.by_group.items()}
                                  if held_out else {}),
        }
    typer.echo(json.dumps(summary))


def _table(results) -> str:  # type: ignore[no-untyped-def]
    """Detectors as rows: in-sample and left-out score, then each group's left-out score (a
    category, or a file's name without its folder when there is one category)."""
    first = next((held_out for _, held_out in results.values() if held_out), None)
    groups = list(first.by_group) if first else []
    width = max(len(key) for key in results) + 2
    label = "(left out)" if first is None or first.grouped_by == "category" else "(file left out)"
    header = f"{'detector':<{width}}{'in-sample':>10}{'left-out':>10}" + "".join(
        f"  {Path(g).stem[:24]:>24}" for g in groups)
    lines = [header, f"{'':<{width}}{'':>20}" + "".join(f"  {label:>24}" for _ in groups)]
    for key, (score, held_out) in results.items():
        shown = f"{held_out.score:>10.2f}" if held_out else f"{'-':>10}"
        lines.append(f"{key:<{width}}{score.score:>10.2f}{shown}" + "".join(
            f"  {held_out.by_group.get(g, float('nan')) if held_out else float('nan'):>24.2f}"
            for g in groups))
    return "\n".join(lines)


@app.command("corpus")
def corpus(
    out: Annotated[Path, typer.Option(help="Folder to write data/<category>/*.csv, windows.json "
                                           "and truth.json into.")],
    seed: Annotated[int, typer.Option(min=0, help="The same seed writes the same corpus.")] = 0,
    files_per_category: Annotated[int, typer.Option(min=1, help="Series per category.")] = 12,
) -> None:
    """Write a seeded, labelled corpus of push-platform series (bursts, drops, level shifts,
    drifts, broken daily rhythms, noise bursts) in NAB's layout, for `anomaly eval`."""
    from models.anomaly_corpus import write_corpus

    if out.exists() and not out.is_dir():
        fail(f"--out {out}: is a file; give a new or empty folder")
    if out.is_dir() and any(out.iterdir()):
        held = "a corpus (windows.json)" if (out / "windows.json").exists() else "files"
        fail(f"--out {out}: already holds {held}; give a new or empty folder")
    typer.echo(json.dumps(write_corpus(out, seed=seed, files_per_category=files_per_category)))
