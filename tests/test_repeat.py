"""BG/NBD on the real CDNOW sample, and "buys again" evaluated beside its baselines."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.repeat import BgNbd, rfm_summary
from pipeline.errors import InvalidInputError
from pipeline.training import evaluate_repeat

PUSHPILOT = str(Path(sys.executable).with_name("pushpilot"))
_CALIBRATION_END = pd.Timestamp("1997-09-30")


@pytest.fixture(scope="module")
def cdnow() -> pd.DataFrame:
    """CDNOW_sample.txt as lifetimes ships it (found, not imported): id, master id, date, CDs, $."""
    spec = importlib.util.find_spec("lifetimes")
    assert spec is not None and spec.submodule_search_locations, "pip install -e '.[test]'"
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "CDNOW_sample.txt"
    frame = pd.read_csv(path, sep=r"\s+", header=None, names=["id", "master", "date", "cds", "amount"],
                        dtype={"id": str, "date": str})
    frame["date"] = pd.to_datetime(frame["date"], format="%Y%m%d")
    return frame


def test_bgnbd_reproduces_the_published_cdnow_parameters(cdnow):
    days = (cdnow["date"] - pd.Timestamp("1997-01-01")).dt.days.to_numpy()
    end = (_CALIBRATION_END - pd.Timestamp("1997-01-01")).days
    customers, x, t_x, big_t = rfm_summary(cdnow["id"].to_numpy(), days, end)
    assert len(customers) == 2357 and x.sum() == 2457  # the paper's sample and repeat purchases

    model = BgNbd().fit(x, t_x / 7, big_t / 7)  # weeks, as in the paper

    # Fader, Hardie and Lee (2005), Table 1: r 0.243, alpha 4.414, a 0.793, b 2.426.
    assert model.r == pytest.approx(0.243, abs=0.002)
    assert model.alpha == pytest.approx(4.414, abs=0.02)
    assert model.a == pytest.approx(0.793, abs=0.005)
    assert model.b == pytest.approx(2.426, abs=0.02)
    assert model.log_likelihood_ == pytest.approx(-9582.4, abs=0.5)
    # Their forecast for weeks 40-78 is about 1,652 repeat purchases for the whole sample.
    expected = model.expected_purchases(39, x, t_x / 7, big_t / 7)
    assert expected.sum() == pytest.approx(1652, rel=0.01)
    assert (expected >= 0).all()


@pytest.mark.parametrize(
    ("frequency", "recency", "T", "problem"),
    [
        ([1, 2], [1], [3, 4], "differ in length"),
        ([0, 1], [0, 5], [3, 4], "recency <= T"),
        ([0, 1], [2, 1], [3, 4], "no repeat purchase has recency 0"),
        ([0, 0], [0, 0], [3, 4], "no customer bought twice"),
        ([np.nan, 1], [0, 1], [3, 4], "finite"),
    ],
)
def test_bgnbd_refuses_histories_that_cannot_be(frequency, recency, T, problem):
    with pytest.raises(ValueError, match=problem):
        BgNbd().fit(frequency, recency, T)


def _events(cdnow: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"user_id": cdnow["id"], "event_time": cdnow["date"].dt.tz_localize("UTC"),
                         "event_type": "purchase", "value": cdnow["amount"].astype(float)})


def test_buys_again_is_scored_for_ours_and_both_baselines_on_the_same_users(cdnow):
    cutoff = pd.Timestamp("1997-09-30T23:59:59Z")
    result = evaluate_repeat(_events(cdnow), cutoff=cutoff, horizon_days=273)

    print(f"\nCDNOW sample, 39 weeks: {result.roc_auc}")
    ours = next(k for k in result.roc_auc if k.startswith("pushpilot ("))
    assert {"RFM logistic regression", "BG/NBD expected purchases"} < set(result.roc_auc)
    assert {"cv PropensityModel (training users)", "cv LogisticTableModel (training users)"} < set(result.roc_auc)
    assert result.n_train + result.n_holdout == 2357
    assert all(0.7 < v < 0.9 for v in result.roc_auc.values())
    # CV on the training users picks the learner; on these histories the linear one.
    assert ours == "pushpilot (LogisticTableModel)"
    assert result.roc_auc[ours] >= result.roc_auc["BG/NBD expected purchases"]
    assert result.bgnbd_params["r"] == pytest.approx(0.24, abs=0.03)  # training users only
    with pytest.raises(InvalidInputError, match="target_event"):
        evaluate_repeat(_events(cdnow), cutoff=cutoff, horizon_days=273, target_event="refund")


def test_model_eval_prints_the_table_and_one_json_line(cdnow, tmp_path: Path):
    path = tmp_path / "events.csv"
    _events(cdnow).to_csv(path, index=False)
    env = {**os.environ, "PUSHPILOT_DATA_DIR": str(tmp_path / "state")}
    proc = subprocess.run([PUSHPILOT, "model", "eval", "--events", str(path), "--cutoff",
                           "1997-09-30T23:59:59Z", "--horizon", "273"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["eval"] == "repeat" and len(report["roc_auc"]) == 5
    assert "BG/NBD expected purchases" in proc.stderr and "ROC AUC" in proc.stderr
    missing = subprocess.run([PUSHPILOT, "model", "eval", "--events", str(tmp_path / "nope.csv"),
                              "--cutoff", "1997-09-30"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and "nope.csv" in missing.stderr


def test_training_from_events_reports_the_baselines_and_promotes_only_above_the_best(
    cdnow, registry, new_tenant_id
):
    from pipeline.training import train_propensity

    result = train_propensity(new_tenant_id("cdnow"), _events(cdnow),
                              cutoff=pd.Timestamp("1997-09-30T23:59:59Z"), horizon_days=273,
                              registry=registry)

    assert set(result.baselines) == {"rfm_logistic", "bgnbd"}
    assert result.learner == max(result.cv_scores, key=result.cv_scores.__getitem__)
    assert {"baseline_roc_auc_rfm_logistic", "cv_roc_auc_LogisticTableModel"} < set(result.metrics)
    # 590 held-out users, 171 who bought again: enough for the gate to hold.
    assert result.version.is_champion == (result.metrics["roc_auc"] >= max(result.baselines.values()))
