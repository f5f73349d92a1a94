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
_DETECTOR_HELP = "seasonal-artime (default), seasonal-likelihood, artime or windowed-gaussian."


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


def _detector(name: str):  # type: ignore[no-untyped-def]
    from models.streaming import make_detector

    try:
        return make_detector(name)
    except ValueError as e:
        fail(f"--detector: {e}")


@app.command("detect")
def detect(
    input_path: Annotated[Path, typer.Option("--input", help="CSV with columns timestamp,value.")],
    out: Annotated[Path, typer.Option(help="Where to write the series with anomaly_score.")],
    detector: Annotated[str, typer.Option(help=_DETECTOR_HELP)] = "seasonal-artime",
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


@app.command("eval")
def evaluate(
    data: Annotated[Path, typer.Option(help="Folder holding <category>/<file>.csv series.")],
    windows: Annotated[Path, typer.Option(help="NAB windows JSON: file -> [[start, end], ...].")],
    detector: Annotated[str, typer.Option(help="Our detector to score next to the windowed-Gaussian "
                                          "baseline: " + _DETECTOR_HELP)] = "seasonal-artime",
) -> None:
    """NAB standard-profile score of a detector and of the windowed-Gaussian baseline, same run."""
    from models.nab import label_series, read_windows, score_corpus

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
    names = {detector: _detector(detector), "windowed-gaussian": _detector("windowed-gaussian")}
    started = time.monotonic()
    corpora: dict[str, dict] = {name: {} for name in names}  # type: ignore[type-arg]
    for file_name, file_windows in sorted(labelled_windows.items()):
        frame = read_series(data / file_name)
        try:
            labelled = label_series(file_name, frame["timestamp"], file_windows)
        except ValueError as e:
            fail(f"--windows: {e}")
        for name, model in names.items():
            corpora[name][file_name] = (labelled, model.score(frame["timestamp"], frame["value"]))
    try:
        results = {name: score_corpus(corpus) for name, corpus in corpora.items()}
    except ValueError as e:
        fail(str(e))
    ours = results[detector]
    for file in ours.files:
        stamps = corpora[detector][file.name][0].timestamps
        shown = ", ".join(str(stamps[i]) for i in file.detections[:10])
        more = f" (+{len(file.detections) - 10} more)" if len(file.detections) > 10 else ""
        typer.echo(f"{file.name}: raw={file.raw:.3f} tp={file.true_positives} "
                   f"fn={file.false_negatives} fp={file.false_positives} "
                   f"detections=[{shown}]{more}")
    summary = {
        "profile": "standard",
        "files": len(labelled_windows),
        "windows": int(round(ours.perfect)),
        "seconds": round(time.monotonic() - started, 1),
    }
    for name, result in results.items():
        summary[name] = {
            "score": round(result.score, 2),
            "threshold": round(result.threshold, 6),
            "raw": round(result.raw, 3),
            "by_category": {k: round(v, 2) for k, v in result.by_prefix().items()},
        }
    typer.echo(json.dumps(summary))
