"""Table models: the scikit-learn contract, reading tenants' tables, and real public data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from sklearn.utils.estimator_checks import parametrize_with_checks

from models.metrics import roc_auc
from models.tabular import LogisticTableModel, TableModel, cross_validated_auc
from pipeline.errors import InvalidInputError
from pipeline.tabular import prepare_table, read_table, score_table, train_table

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
BANK = DATASETS / "bank_marketing" / "bank-full.csv"
SHOPPERS = DATASETS / "online_shoppers" / "online_shoppers_intention.csv"


def _mixed_table(n_rows: int = 3000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    plan = rng.choice(["free", "plus", "pro", "team"], size=n_rows)
    visits = rng.poisson(4, n_rows).astype(float)
    visits[::11] = np.nan
    is_mobile = rng.random(n_rows) < 0.5
    logit = -2.0 + 0.3 * np.nan_to_num(visits) + np.select(
        [plan == "pro", plan == "team"], [1.5, 2.5], 0.0
    )
    y = rng.random(n_rows) < 1 / (1 + np.exp(-logit))
    frame = pd.DataFrame({"plan": plan, "visits": visits, "is_mobile": is_mobile,
                          "user_id": [f"u{i}" for i in range(n_rows)],
                          "bought": np.where(y, "yes", "no")})
    frame.loc[::13, "plan"] = None
    return frame


def _known_deviations(estimator: object) -> dict[str, str]:
    if isinstance(estimator, LogisticTableModel):
        # The weights weigh the regression's loss only (what class-transformation uplift needs);
        # the median, the scaling and the rare-category counts stay those of the rows as given.
        return {"check_sample_weight_equivalence_on_dense_data":
                "sample_weight weighs the regression, not the encoders"}
    return {}


@parametrize_with_checks([TableModel(n_threads=1, max_iter=30), LogisticTableModel()],
                         expected_failed_checks=_known_deviations)
def test_table_model_follows_the_scikit_learn_contract(estimator, check):
    check(estimator)


def test_text_columns_are_categories_and_unseen_or_missing_values_still_score():
    frame = _mixed_table()
    X, y, identifiers = prepare_table(frame, "bought")
    model = TableModel(random_state=0, n_threads=1).fit(X.iloc[:2000], y.iloc[:2000])

    assert identifiers == ["user_id"]
    assert model.categorical_columns_ == ["plan"]
    assert roc_auc(y.iloc[2000:], model.predict_proba(X.iloc[2000:])[:, 1]) > 0.75
    odd = X.head(3).assign(plan=["enterprise", None, "pro"])
    assert np.isfinite(model.predict_proba(odd)).all()


@pytest.mark.parametrize("sep", [";", "\t", "|", ","])
def test_read_table_sniffs_the_separator(tmp_path, sep):
    path = tmp_path / "t.csv"
    _mixed_table(200).to_csv(path, sep=sep, index=False)

    frame = read_table(path)

    assert list(frame.columns) == ["plan", "visits", "is_mobile", "user_id", "bought"]
    assert frame["visits"].dtype.kind == "f" and frame["is_mobile"].dtype == bool


def test_read_table_reads_parquet_and_refuses_what_it_cannot_read(tmp_path):
    _mixed_table(200).to_parquet(tmp_path / "t.parquet")
    assert len(read_table(tmp_path / "t.parquet")) == 200
    (tmp_path / "t.json").write_text("{}")
    with pytest.raises(InvalidInputError, match="unsupported file type '.json'"):
        read_table(tmp_path / "t.json")
    (tmp_path / "one.csv").write_text("a b c\n1 2 3\n")
    with pytest.raises(InvalidInputError, match="one column"):
        read_table(tmp_path / "one.csv")


def test_prepare_table_names_a_missing_label_and_an_unclear_positive():
    frame = _mixed_table(200)
    with pytest.raises(InvalidInputError, match="no column 'y'"):
        prepare_table(frame, "y")
    with pytest.raises(InvalidInputError, match="--positive"):
        prepare_table(frame, "plan")
    with pytest.raises(InvalidInputError, match="'maybe' never occurs"):
        prepare_table(frame, "bought", positive="maybe")
    _, y, _ = prepare_table(frame, "bought", positive="no")
    assert y.mean() == (frame["bought"] == "no").mean()


@pytest.fixture(scope="module")
def bank() -> pd.DataFrame:
    return read_table(BANK)


@pytest.mark.slow
def test_bank_marketing_matches_published_auc_and_a_worse_challenger_stays_out(
    bank, registry, new_tenant_id
):
    tenant_id = new_tenant_id("bank")

    full = train_table(tenant_id, bank, label="y", registry=registry)
    no_duration = train_table(tenant_id, bank, label="y", drop=["duration"], registry=registry)

    print(f"bank marketing roc_auc: all columns {full.metrics['roc_auc']:.4f} "
          f"({full.fit_seconds:.1f}s), without duration {no_duration.metrics['roc_auc']:.4f} "
          f"({no_duration.fit_seconds:.1f}s)")
    assert full.metrics["roc_auc"] >= 0.93
    assert 0.78 <= no_duration.metrics["roc_auc"] < full.metrics["roc_auc"]
    # Chosen by 5-fold CV on the training rows; the baselines scored on the same hold-out.
    for result in (full, no_duration):
        assert set(result.cv_scores) == {"TableModel", "LogisticTableModel"}
        assert result.learner == max(result.cv_scores, key=result.cv_scores.__getitem__)
        assert result.baselines["prior"] == 0.5
        assert result.metrics["roc_auc"] >= result.baselines["logistic"] > 0.75
        # The calibration map was chosen by CV Brier on the learner's out-of-fold scores.
        assert {"cv_brier_none", "cv_brier_platt", "cv_brier_isotonic"} <= set(result.metrics)
        assert result.metrics["brier"] <= result.metrics["brier_uncalibrated"] + 0.002
        assert result.calibration in {"none", "platt", "isotonic"}
        run = MlflowClient(tracking_uri=registry.tracking_uri).get_run(result.version.run_id)
        assert run.data.params["calibration"] == result.calibration
        assert run.data.params["estimator"] == result.learner
    print(f"baselines: logistic {full.baselines['logistic']:.4f} / without duration "
          f"{no_duration.baselines['logistic']:.4f}; cv {full.cv_scores}")
    assert full.fit_seconds < 60 and no_duration.fit_seconds < 60
    assert full.version.is_champion and not no_duration.version.is_champion
    assert registry.champion_version(tenant_id, "table") == full.version.version
    model, _ = registry.load_champion(tenant_id, "table")
    scores = score_table(model, bank.head(100))
    assert len(scores) == 100 and scores["score"].between(0, 1).all()


@pytest.mark.slow
def test_online_shoppers_matches_published_auc(registry, new_tenant_id):
    result = train_table(new_tenant_id("shop"), read_table(SHOPPERS), label="Revenue",
                         registry=registry)

    print(f"online shoppers roc_auc {result.metrics['roc_auc']:.4f} ({result.fit_seconds:.1f}s)")
    assert result.metrics["roc_auc"] >= 0.92
    assert result.fit_seconds < 60


def test_logistic_table_model_takes_missing_values_unseen_and_rare_categories():
    rng = np.random.default_rng(0)
    n = 600
    X = pd.DataFrame({
        "visits": rng.poisson(3, n).astype(float),
        "plan": rng.choice(["free", "gold", "silver"], n),
        "city": pd.array(rng.choice(["a", "b", "c", "rare"], n, p=[0.4, 0.4, 0.19, 0.01]), dtype="string"),
    })
    y = (X["visits"] + (X["plan"] == "gold") * 2 + rng.normal(0, 1, n) > 4).astype(int).to_numpy()
    X.loc[::7, "visits"] = np.nan
    X.loc[::11, "plan"] = None
    model = LogisticTableModel().fit(X, y)
    unseen = X.head(5).assign(plan=["platinum", None, "gold", "free", "silver"])
    p = model.predict_proba(unseen)[:, 1]
    assert p.shape == (5,) and np.isfinite(p).all()
    assert roc_auc(y, model.predict_proba(X)[:, 1]) > 0.8
    with pytest.raises(ValueError):
        model.predict_proba(X.drop(columns="city"))


def test_cross_validation_scores_every_candidate_on_the_same_folds_or_says_it_cannot():
    rng = np.random.default_rng(1)
    X = pd.DataFrame({"x": rng.normal(size=300), "noise": rng.normal(size=300)})
    y = (X["x"] + rng.normal(0, 0.5, 300) > 0).astype(int).to_numpy()
    candidates = {"TableModel": TableModel(max_iter=50, random_state=0, n_threads=1),
                  "LogisticTableModel": LogisticTableModel()}
    scores = cross_validated_auc(candidates, X, y, folds=5)
    assert set(scores) == set(candidates) and all(0.8 < v <= 1 for v in scores.values())
    assert scores == cross_validated_auc(candidates, X, y, folds=5)  # seeded folds
    tiny = np.zeros(300, dtype=int)
    tiny[0] = 1  # one positive: nothing to cross-validate
    assert all(np.isnan(v) for v in cross_validated_auc(candidates, X, tiny).values())
    with pytest.raises(ValueError, match="folds"):
        cross_validated_auc(candidates, X, y, folds=1)
