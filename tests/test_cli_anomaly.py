"""`pushpilot anomaly detect|eval` through the real entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

PUSHPILOT = Path(sys.executable).with_name("pushpilot")
NAB = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "nab_subset"


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PUSHPILOT_DATA_DIR": str(tmp_path / "data")}
    return subprocess.run([str(PUSHPILOT), "anomaly", *args], capture_output=True, text=True,
                          env=env, timeout=180, cwd=tmp_path)


def test_detect_writes_the_series_back_with_a_causal_score(tmp_path: Path) -> None:
    source = NAB / "data" / "realKnownCause" / "ec2_request_latency_system_failure.csv"
    out = tmp_path / "scored.csv"
    done = _run(tmp_path, "detect", "--input", str(source), "--out", str(out))
    assert done.returncode == 0, done.stderr
    scored, original = pd.read_csv(out), pd.read_csv(source)
    assert list(scored.columns) == ["timestamp", "value", "anomaly_score"]
    assert scored["timestamp"].tolist() == original["timestamp"].tolist()
    assert scored["anomaly_score"].between(0, 1).all()
    prefix = tmp_path / "prefix.csv"
    original.head(2000).to_csv(prefix, index=False)
    assert _run(tmp_path, "detect", "--input", str(prefix), "--out", str(tmp_path / "p.csv")).returncode == 0
    assert pd.read_csv(tmp_path / "p.csv")["anomaly_score"].tolist() == scored["anomaly_score"].head(2000).tolist()


@pytest.mark.slow
def test_eval_prints_files_the_left_out_scores_and_the_baselines_in_one_run(tmp_path: Path) -> None:
    done = _run(tmp_path, "eval", "--data", str(NAB / "data"), "--windows", str(NAB / "windows.json"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert sum(": raw=" in line for line in lines) == 18
    table = [line.split() for line in lines if line.split()[:1] in (["tail-rank"], ["windowed-gaussian"])]
    assert [row[0] for row in table] == ["tail-rank", "windowed-gaussian"]
    summary = json.loads(lines[-1])
    assert summary["detector"] == "tail-rank"
    assert summary["windowed-gaussian"]["score"] == pytest.approx(12.1, abs=0.5)
    ours = summary["tail-rank"]  # 56.00 in-sample, 52.16 left out (docs/anomaly.md)
    assert ours["score"] >= 55.5 and ours["left_out"] >= 51.5
    assert set(ours["left_out_by_category"]) == {"artificialNoAnomaly", "artificialWithAnomaly",
                                                 "realKnownCause"}
    assert float(table[0][2]) == pytest.approx(ours["left_out"], abs=0.01)
    assert summary["seasonal-artime"]["score"] == pytest.approx(63.55, abs=0.05)  # the old default


@pytest.mark.slow
def test_a_written_corpus_evaluates_with_the_harness_reported_apart(tmp_path: Path) -> None:
    written = _run(tmp_path, "corpus", "--out", str(tmp_path / "c"), "--seed", "3",
                   "--files-per-category", "2")
    assert written.returncode == 0, written.stderr
    counts = json.loads(written.stdout)
    assert counts["files"] == 6 and counts["seed"] == 3
    done = _run(tmp_path, "eval", "--data", str(tmp_path / "c" / "data"), "--windows",
                str(tmp_path / "c" / "windows.json"), "--baseline", "windowed-gaussian",
                "--baseline", "artime", "--nab-harness")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert {k for k in summary if isinstance(summary[k], dict)} == {
        "tail-rank", "windowed-gaussian", "artime", "tail-rank+harness",
        "windowed-gaussian+harness", "artime+harness"}
    assert set(summary["tail-rank"]["left_out_by_category"]) == {"synthHourly", "synthMetrics",
                                                                 "synthRequests"}
    # The windowed Gaussian takes nothing from the harness; ARTime's range does change its scores.
    assert summary["windowed-gaussian+harness"]["raw"] == summary["windowed-gaussian"]["raw"]
    again = _run(tmp_path, "corpus", "--out", str(tmp_path / "c"))
    assert again.returncode == 2 and "already holds a corpus" in again.stderr
    assert json.loads((tmp_path / "c" / "truth.json").read_text())  # left as it was


def test_unknown_baseline_fails_before_any_work(tmp_path: Path) -> None:
    done = _run(tmp_path, "eval", "--data", str(NAB / "data"), "--windows", str(NAB / "windows.json"),
                "--baseline", "nope")
    assert done.returncode == 2 and "unknown detector 'nope'" in done.stderr


def test_detector_help_names_every_detector() -> None:
    from models.streaming import DEFAULT_DETECTOR, DETECTORS
    from serving.cli_anomaly import _DETECTOR_HELP

    assert all(name in _DETECTOR_HELP for name in DETECTORS)
    assert f"{DEFAULT_DETECTOR} (default)" in _DETECTOR_HELP


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("time,value\n2014-01-01 00:00:00,1\n", "column 'timestamp' is missing"),
        ("timestamp,value\nyesterday-ish,1\n", "row 2 has timestamp 'yesterday-ish'"),
        ("timestamp,value\n2014-01-01 00:00:00,abc\n", "row 2 has value 'abc'"),
    ],
)
def test_bad_series_is_an_error_with_exit_2(tmp_path: Path, content: str, message: str) -> None:
    source = tmp_path / "bad.csv"
    source.write_text(content)
    done = _run(tmp_path, "detect", "--input", str(source), "--out", str(tmp_path / "o.csv"))
    assert done.returncode == 2 and done.stderr.startswith("error: ") and message in done.stderr


def test_missing_windows_file_is_an_error_with_exit_2(tmp_path: Path) -> None:
    done = _run(tmp_path, "eval", "--data", str(NAB / "data"), "--windows", str(tmp_path / "nope.json"))
    assert done.returncode == 2 and "error: --windows" in done.stderr and "no such file" in done.stderr
