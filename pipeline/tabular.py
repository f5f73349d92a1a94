"""Train and score a tenant's model on its own labelled table: read, check, hold out, register.

A table model is registered as kind ``"table"`` (``pushpilot.<tenant>.table``) and an uplift
model as kind ``"uplift"``, apart from the event-based ``"propensity"`` model the scorer
serves, because their columns are the tenant's own and differ from FEATURE_COLUMNS.
"""

from __future__ import annotations

import csv
import itertools
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.model_selection import train_test_split

from models.calibration import CalibratedModel, choose_calibration, fit_calibrator
from models.metrics import propensity_report, uplift_report
from models.registry import ModelRegistry, ModelVersionInfo
from models.tabular import LogisticTableModel, TableModel, choose_by_cv
from models.uplift import BASELINE_LEARNERS, UpliftModel, make_learner
from pipeline.errors import InvalidInputError

__all__ = [
    "TABLE_KIND",
    "UPLIFT_KIND",
    "TableTrainingResult",
    "read_table",
    "prepare_table",
    "train_table",
    "score_table",
    "score_partitioned",
    "score_proba",
    "PARTITION_ROWS",
]

log = logging.getLogger(__name__)

TABLE_KIND = "table"
UPLIFT_KIND = "uplift"

_CSV_SUFFIXES = (".csv", ".tsv", ".txt")
_PARQUET_SUFFIXES = (".parquet", ".pq")
_SEPARATORS = ",;\t|"
_POSITIVE_WORDS = ("1", "yes", "y", "true", "t", "positive", "pos")
_NEGATIVE_WORDS = ("0", "no", "n", "false", "f", "negative", "neg")
_MIN_PER_CLASS = 10
# A text column whose values are nearly all distinct names a row, not a behaviour: an id,
# an e-mail, a name. It would not generalise and must not reach MLflow's input example.
_IDENTIFIER_DISTINCT_SHARE = 0.9
# Rows per Ray task when batch scoring: big enough that a task's overhead (~ms) is noise,
# small enough that a few fit the object store at once and the progress bar moves.
PARTITION_ROWS = 50_000


@dataclass(frozen=True)
class TableTrainingResult:
    tenant_id: str
    kind: str
    version: ModelVersionInfo
    metrics: dict[str, float]
    n_train: int
    n_holdout: int
    positive_rate: float
    features: list[str]
    dropped_identifiers: list[str] = field(default_factory=list)
    learner: str = "TableModel"
    fit_seconds: float = 0.0
    baselines: dict[str, float] = field(default_factory=dict)  # primary metric, same hold-out
    cv_scores: dict[str, float] = field(default_factory=dict)  # candidates, training rows only
    calibration: str = "none"  # none, platt or isotonic, by CV Brier (tables' propensity only)


def read_table(path: Path, sep: str | None = None) -> pd.DataFrame:
    """Read a CSV (separator given, or sniffed from ``, ; tab |``) or Parquet file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _CSV_SUFFIXES + _PARQUET_SUFFIXES:
        raise InvalidInputError(
            "table", f"unsupported file type {suffix or '(none)'!r} for {path.name}; "
            "use .csv, .tsv, .txt or .parquet"
        )
    if not path.is_file():
        raise InvalidInputError("table", f"no such file: {path}")
    if path.stat().st_size == 0:
        raise InvalidInputError("table", f"{path.name} is empty; expected a header row and rows")
    if suffix in _PARQUET_SUFFIXES:
        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError) as e:
            raise InvalidInputError("table", f"{path.name} is not readable Parquet: {e}") from e
    else:
        frame = _read_csv(path, sep)
    frame.columns = [str(c).strip() for c in frame.columns]
    if frame.empty:
        raise InvalidInputError("table", f"{path.name} has a header but no rows")
    return frame


def _read_csv(path: Path, sep: str | None) -> pd.DataFrame:
    try:
        with path.open(encoding="utf-8-sig") as handle:
            sample = handle.read(64 * 1024)
    except UnicodeDecodeError as e:
        raise InvalidInputError("table", f"{path.name} is not UTF-8 text: {e}") from e
    if sep is None:
        header = sample.splitlines()[0] if sample.strip() else ""
        try:
            sep = csv.Sniffer().sniff(sample, delimiters=_SEPARATORS).delimiter
        except csv.Error:
            sep = max(_SEPARATORS, key=header.count)
    elif sep in ("\\t", "tab"):
        sep = "\t"
    if len(sep) != 1:
        raise InvalidInputError("sep", f"must be one character, got {sep!r}")
    try:
        frame = pd.read_csv(path, sep=sep, skipinitialspace=True, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InvalidInputError("table", f"{path.name} is not valid CSV with sep {sep!r}: {e}") from e
    if frame.shape[1] < 2:
        raise InvalidInputError(
            "table", f"{path.name} has one column {list(frame.columns)} with sep {sep!r}; "
            "a table needs a label and features, so give the separator with --sep"
        )
    return frame


def _positive_mask(values: pd.Series, label: str, positive: str | None) -> pd.Series:
    text = values.astype("str").str.strip().str.lower()
    distinct = sorted(text.unique().tolist())
    if positive is not None:
        wanted = str(positive).strip().lower()
        if wanted not in distinct:
            raise InvalidInputError(
                "positive", f"{positive!r} never occurs in label {label!r}; its values are "
                f"{distinct[:10]}"
            )
        return text == wanted
    if len(distinct) != 2:
        raise InvalidInputError(
            "label", f"{label!r} has {len(distinct)} distinct values {distinct[:10]}; "
            "name the positive one with --positive"
        )
    for word in _POSITIVE_WORDS:
        other = [v for v in distinct if v != word]
        if word in distinct and other[0] in _NEGATIVE_WORDS:
            return text == word
    raise InvalidInputError(
        "label", f"cannot tell which of {distinct} is positive; name it with --positive"
    )


def prepare_table(
    frame: pd.DataFrame,
    label: str,
    *,
    positive: str | None = None,
    drop: Sequence[str] = (),
    treatment: str | None = None,
) -> tuple[pd.DataFrame, pd.Series, list[str]]:
    """Features, 0/1 labels and the identifier-like text columns left out.

    Rows without a label are left out. ``drop`` and ``treatment`` columns are not features.
    """
    if label not in frame.columns:
        raise InvalidInputError(
            "label", f"no column {label!r} in the table; found {list(frame.columns)}"
        )
    unknown = [c for c in drop if c not in frame.columns]
    if unknown:
        raise InvalidInputError(
            "drop", f"no column {unknown[0]!r} in the table; found {list(frame.columns)}"
        )
    if treatment is not None and treatment not in frame.columns:
        raise InvalidInputError(
            "treatment", f"no column {treatment!r} in the table; found {list(frame.columns)}"
        )
    if treatment == label or label in drop:
        raise InvalidInputError("label", f"{label!r} cannot also be dropped or the treatment")
    labelled = frame[frame[label].notna()]
    if labelled.empty:
        raise InvalidInputError("label", f"every row of {label!r} is empty")
    y = _positive_mask(labelled[label], label, positive).astype(np.int64)
    counts = y.value_counts()
    if len(counts) < 2 or counts.min() < _MIN_PER_CLASS:
        raise InvalidInputError(
            "label", f"need at least {_MIN_PER_CLASS} positive and {_MIN_PER_CLASS} negative rows, "
            f"got {int(counts.get(1, 0))} positive and {int(counts.get(0, 0))} negative"
        )
    not_features = {label, *drop} | ({treatment} if treatment else set())
    X = labelled[[c for c in labelled.columns if c not in not_features]]
    identifiers = [
        c
        for c in X.columns
        if not (pd.api.types.is_numeric_dtype(X[c]) or pd.api.types.is_bool_dtype(X[c]))
        and len(X) >= 50
        and X[c].nunique() > _IDENTIFIER_DISTINCT_SHARE * len(X)
    ]
    X = X.drop(columns=identifiers)
    if X.shape[1] == 0:
        raise InvalidInputError(
            "table", "no feature columns left after the label, --drop and identifier columns"
        )
    return X.reset_index(drop=True), y.reset_index(drop=True), identifiers


def _arms(frame: pd.DataFrame, treatment: str, control: str) -> np.ndarray:
    """Each row's arm, as stripped text; the control value must occur, and another arm too.

    Every row needs an arm. Whole numbers stored as floats (a 0/1 column read with gaps
    elsewhere) read as integers, so ``--control 0`` finds ``0.0``.
    """
    raw = frame[treatment]
    missing = int(raw.isna().sum())
    if missing:
        raise InvalidInputError(
            "treatment", f"{missing} row(s) have no value in {treatment!r}; an uplift log needs "
            "every user's arm (drop those rows or name their arm)"
        )
    if pd.api.types.is_float_dtype(raw) and bool((raw == raw.round()).all()):
        raw = raw.astype("int64")
    arms = raw.astype("str").str.strip()
    distinct = sorted(arms.unique().tolist())
    if str(control).strip() not in distinct:
        raise InvalidInputError(
            "control", f"{control!r} never occurs in treatment column {treatment!r}; its values "
            f"are {distinct[:10]}"
        )
    if len(distinct) < 2:
        raise InvalidInputError(
            "treatment", f"{treatment!r} holds only the control arm {control!r}; an uplift model "
            "needs a randomised log with treated users too"
        )
    by_name: dict[str, list[str]] = {}
    for arm in distinct:
        by_name.setdefault(_metric_arm(arm), []).append(arm)
    clashes = [group for group in by_name.values() if len(group) > 1]
    if clashes:
        raise InvalidInputError(
            "treatment", f"arms {clashes[0]} would share one metric name; rename them apart"
        )
    return arms.to_numpy(dtype=object)


# MLflow metric names allow letters, digits, "_-. :/", but read "/" and "." as path parts;
# an arm's part of a name keeps the rest.
_METRIC_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_\- :]")


def _metric_arm(arm: str) -> str:
    return _METRIC_NAME_UNSAFE.sub("_", arm)


def _uplift_scores(per_arm: pd.DataFrame, y: np.ndarray, arms: np.ndarray,
                   control: str) -> dict[str, float]:
    """Hold-out uplift metrics, each arm judged on its own and the control's rows.

    One arm: :func:`~models.metrics.uplift_report` as is. Several: the mean over arms under
    the plain names, and each arm's under ``<metric>.<arm>``.
    """
    reports: dict[str, dict[str, float]] = {}
    for arm in per_arm.columns:
        rows = (arms == control) | (arms == arm)
        reports[str(arm)] = uplift_report(y[rows], arms[rows] == arm, per_arm[arm].to_numpy()[rows])
    if len(reports) == 1:
        return next(iter(reports.values()))
    out = {key: float(np.mean([r[key] for r in reports.values()])) for key in next(iter(reports.values()))}
    for arm, report in reports.items():
        out.update({f"{key}.{_metric_arm(arm)}": v for key, v in report.items()})
    return out


def _per_arm(model: Any, X: pd.DataFrame, arms: Sequence[str]) -> pd.DataFrame:
    """A fitted uplift model's uplift per arm; a one-arm model (no ``predict_arms``) serves all."""
    if hasattr(model, "predict_arms"):
        return model.predict_arms(X)[list(arms)]
    uplift = model.predict(X)
    return pd.DataFrame({arm: uplift for arm in arms}, index=X.index)


def _uplift_baselines(model: Any, ours: dict[str, float], X_train: pd.DataFrame,
                      y_train: np.ndarray, a_train: np.ndarray, X_hold: pd.DataFrame,
                      y_hold: np.ndarray, a_hold: np.ndarray, control: str, random_state: int,
                      n_threads: int | None) -> dict[str, dict[str, float]]:
    """The simple uplift learners per arm on the same split: class transformation with
    logistic regression, a T-learner of two default boosted models, and random targeting."""
    out: dict[str, dict[str, float]] = {}
    for name, learner in BASELINE_LEARNERS.items():
        columns: dict[str, np.ndarray] = {}
        for arm in model.arms_:
            if model.learners_[arm] == learner:
                columns[arm] = model.estimators_[arm].predict(X_hold)  # the same fit: reuse it
                continue
            rows = (a_train == control) | (a_train == arm)
            columns[arm] = make_learner(learner, random_state, n_threads).fit(
                X_train[rows], y_train[rows], a_train[rows] == arm).predict(X_hold)
        out[name] = _uplift_scores(pd.DataFrame(columns, index=X_hold.index), y_hold, a_hold, control)
    # Random targeting: its uplift at any k is the arm's overall effect (ate), its Qini AUC 0.
    out["random"] = {}
    for key, value in ours.items():
        metric, dot, arm = key.partition(".")
        if metric == "ate":
            out["random"][f"uplift_at_30pct{dot}{arm}"] = value
            out["random"][f"qini_auc{dot}{arm}"] = 0.0
    return out


def train_table(
    tenant_id: str,
    frame: pd.DataFrame,
    *,
    label: str,
    registry: ModelRegistry,
    positive: str | None = None,
    drop: Sequence[str] = (),
    treatment: str | None = None,
    control: str | None = None,
    holdout_fraction: float = 0.25,
    random_state: int = 0,
    n_threads: int | None = 1,
    force: bool = False,
    cv_folds: int = 5,
) -> TableTrainingResult:
    """Fit on a stratified part of the table, evaluate on the rest, register and maybe promote.

    With ``treatment`` and ``control``, an :class:`~models.uplift.UpliftModel` is trained
    (kind ``"uplift"``, primary metric Qini AUC): each arm other than ``control`` against the
    control on its own, its learner chosen by ``cv_folds``-fold CV Qini on the training rows,
    reported beside the baselines (logistic class transformation, a boosted T-learner, random)
    on the hold-out and promoted only if it reaches the best of them; otherwise the better by ``cv_folds``-fold cross-validated ROC AUC on the training
    rows of :class:`~models.tabular.TableModel` and :class:`~models.tabular.LogisticTableModel`
    (kind ``"table"``), reported beside the baselines (logistic regression, the prior) on the
    hold-out, and promoted only if it reaches the best of them. The
    hold-out depends only on the labelled rows and ``random_state``, so a challenger and the
    champion are compared on the same rows; a champion that cannot score the table (it needs
    columns the table lacks) counts as not beaten, so only ``force`` replaces it.
    """
    if (treatment is None) != (control is None):
        raise InvalidInputError("control", "give --treatment and --control together")
    if cv_folds < 2:
        raise InvalidInputError("cv_folds", f"must be at least 2, got {cv_folds}")
    if not 0.05 <= holdout_fraction <= 0.5:
        raise InvalidInputError("holdout_fraction", f"must be in [0.05, 0.5], got {holdout_fraction}")
    X, y, identifiers = prepare_table(
        frame, label, positive=positive, drop=drop, treatment=treatment
    )
    if identifiers:
        log.info("tenant %s: left out identifier-like columns %s", tenant_id, identifiers)
    # Kept for the champion: it may use columns this challenger was told to drop.
    full = frame[frame[label].notna()].reset_index(drop=True)
    arms = _arms(full, treatment, control) if treatment and control is not None else None
    strata = (y.astype(str).to_numpy() + "|" + arms) if arms is not None else y.to_numpy()
    rows = np.arange(len(y))
    train_rows, hold_rows = train_test_split(
        rows, test_size=holdout_fraction, stratify=strata, random_state=random_state
    )
    X_train, X_hold = X.iloc[train_rows], X.iloc[hold_rows]
    y_train, y_hold = y.to_numpy()[train_rows], y.to_numpy()[hold_rows]
    full_hold = full.iloc[hold_rows]

    started = time.perf_counter()
    model: Any
    baselines: dict[str, float] = {}
    cv_scores: dict[str, float] = {}
    calibration = "none"
    if arms is None:
        kind, primary = TABLE_KIND, "roc_auc"
        # Candidates chosen by k-fold CV on the training rows only; the hold-out judges the
        # choice and the baselines alike and picks nothing.
        candidates: dict[str, Any] = {
            "TableModel": TableModel(random_state=random_state, n_threads=n_threads),
            "LogisticTableModel": LogisticTableModel(),
        }
        # Too few of a class to cross-validate: the booster (first), as before selection existed.
        oof: dict[str, np.ndarray] = {}
        learner, chosen, cv_scores = choose_by_cv(candidates, X_train, y_train, folds=cv_folds,
                                                  random_state=random_state, oof=oof)
        # Probabilities mapped by Platt or isotonic calibration, or left as they are, by CV
        # Brier score on the chosen learner's out-of-fold predictions.
        calibration, calibration_cv = (
            choose_calibration(oof[learner], y_train, folds=cv_folds, random_state=random_state)
            if learner in oof else ("none", {}))
        model = chosen if calibration == "none" else CalibratedModel(
            chosen, calibration, fit_calibrator(calibration, oof[learner], y_train))
        fit_seconds = time.perf_counter() - started
        p_hold = model.predict_proba(X_hold)[:, 1]
        metrics = propensity_report(y_hold, p_hold)
        metrics["brier_uncalibrated"] = float(np.mean((chosen.predict_proba(X_hold)[:, 1] - y_hold) ** 2))
        metrics.update({f"cv_brier_{name}": v for name, v in calibration_cv.items()})
        logistic = chosen if learner == "LogisticTableModel" else LogisticTableModel().fit(X_train, y_train)
        baselines = {
            "logistic": float(propensity_report(y_hold, logistic.predict_proba(X_hold)[:, 1])["roc_auc"]),
            "prior": 0.5,  # one score for every row: ranks nobody
        }
        metrics.update({f"cv_roc_auc_{name}": v for name, v in cv_scores.items()})
        metrics.update({f"baseline_roc_auc_{name}": v for name, v in baselines.items()})

        def _holdout_score(candidate: Any) -> float:
            p = candidate.predict_proba(_columns_for(candidate, full_hold))[:, 1]
            return float(propensity_report(y_hold, p)["roc_auc"])

        plot_scores: Any = p_hold
        uplift_holdout = None
    else:
        kind, primary = UPLIFT_KIND, "qini_auc"
        a_train, a_hold = arms[train_rows], arms[hold_rows]
        control_arm = str(control).strip()
        try:
            model = UpliftModel(cv_folds=cv_folds, control=control_arm, random_state=random_state,
                                n_threads=n_threads).fit(X_train, y_train, a_train)
        except ValueError as e:
            raise InvalidInputError("treatment", str(e)) from e
        fit_seconds = time.perf_counter() - started
        per_arm_hold = model.predict_arms(X_hold)
        try:
            metrics = _uplift_scores(per_arm_hold, y_hold, a_hold, control_arm)
            uplift_baselines = _uplift_baselines(model, metrics, X_train, y_train, a_train, X_hold,
                                                 y_hold, a_hold, control_arm, random_state,
                                                 n_threads)
        except ValueError as e:  # the top of the ranking is one group only: arms follow features
            raise InvalidInputError(
                "treatment", f"{e}; the arms look predictable from the features, so {treatment!r} "
                "may not be a randomised assignment"
            ) from e
        for arm, scores in model.cv_scores_.items():
            suffix = "" if len(model.arms_) == 1 else f".{_metric_arm(arm)}"
            metrics.update({f"cv_qini_auc_{name}{suffix}": v for name, v in scores.items()
                            if not np.isnan(v)})
        for name, report in uplift_baselines.items():
            for key, v in report.items():
                metric, dot, arm = key.partition(".")
                if metric in ("qini_auc", "uplift_at_30pct"):
                    metrics[f"baseline_{metric}_{name}{dot}{arm}"] = v
        baselines = {name: report[primary] for name, report in uplift_baselines.items()}
        cv_scores = {
            (name if len(model.arms_) == 1 else f"{name}[{arm}]"): v
            for arm, scores in model.cv_scores_.items() for name, v in scores.items()
            if not np.isnan(v)
        }
        learner = "UpliftModel[" + ", ".join(
            (chosen if len(model.arms_) == 1 else f"{arm}: {chosen}")
            for arm, chosen in model.learners_.items()) + "]"

        def _holdout_score(candidate: Any) -> float:
            per_arm = _per_arm(candidate, _columns_for(candidate, full_hold), model.arms_)
            return float(_uplift_scores(per_arm, y_hold, a_hold, control_arm)[primary])

        plot_scores = None
        first = model.arms_[0]
        rows = (a_hold == control_arm) | (a_hold == first)
        uplift_holdout = (y_hold[rows], a_hold[rows] == first, per_arm_hold[first].to_numpy()[rows])

    def champion_score(champion: Any) -> float:
        try:
            return _holdout_score(champion)
        except (KeyError, ValueError, AttributeError) as e:
            log.warning("tenant %s: champion cannot score this hold-out: %s", tenant_id, e)
            return float("nan")

    version = registry.log_model(
        tenant_id,
        kind,
        model,
        X_example=_example(X_hold),
        metrics=metrics,
        params={
            "estimator": learner,
            "calibration": calibration,
            **({k: v for k, v in getattr(model, "estimator_", model).get_params().items()
                if k != "n_threads" and not isinstance(v, BaseEstimator)}),
            "label": label,
            "positive": positive if positive is not None else "(inferred)",
            "dropped": ",".join(drop) or "(none)",
            "identifier_columns": ",".join(identifiers) or "(none)",
            "n_train": len(train_rows),
            "n_holdout": len(hold_rows),
            "holdout": f"stratified {holdout_fraction:g}, seed {random_state}",
        },
        y_holdout=y_hold if plot_scores is not None else None,
        p_holdout=plot_scores,
        uplift_holdout=uplift_holdout,
        primary_metric=primary,
        force=force,
        champion_score=champion_score,
        baseline_score=max(baselines.values()) if baselines else None,
    )
    log.info("tenant %s: %s v%d %s=%.4f champion=%s", tenant_id, kind, version.version, primary,
             metrics[primary], version.is_champion)
    return TableTrainingResult(
        tenant_id=tenant_id,
        kind=kind,
        version=version,
        metrics=metrics,
        n_train=len(train_rows),
        n_holdout=len(hold_rows),
        positive_rate=float(y.mean()),
        features=[str(c) for c in X.columns],
        dropped_identifiers=identifiers,
        learner=learner,
        fit_seconds=fit_seconds,
        baselines=baselines,
        cv_scores=cv_scores,
        calibration=calibration,
    )


def _example(X: pd.DataFrame) -> pd.DataFrame:
    """A few feature rows for MLflow's signature: text as object, since MLflow infers no
    schema from pandas' ``str`` dtype; integers as floats, since a scored table may have gaps."""
    example = X.head(5).reset_index(drop=True)
    dtypes: dict[str, Any] = {}
    for c in example.columns:
        if pd.api.types.is_string_dtype(example[c]):
            dtypes[c] = object
        elif pd.api.types.is_integer_dtype(example[c]):
            dtypes[c] = np.float64
    return example.astype(dtypes)


def _columns_for(model: Any, frame: pd.DataFrame) -> pd.DataFrame:
    """The columns a fitted model was trained on, in its order; KeyError names a missing one."""
    names = _feature_names(model)
    missing = [c for c in names if c not in frame.columns]
    if missing:
        raise KeyError(f"the model needs column {missing[0]!r}, which the table lacks")
    return frame[names]


def _feature_names(model: Any) -> list[str]:
    inner = model
    if hasattr(inner, "estimators_") and isinstance(inner.estimators_, dict):
        inner = next(iter(inner.estimators_.values()))  # every arm's learner saw the same columns
    for attribute in ("estimator_", "treated_model_", "model_"):
        if hasattr(inner, "feature_names_in_"):
            break
        inner = getattr(inner, attribute, inner)
    names = getattr(inner, "feature_names_in_", None)
    if names is None:
        raise ValueError(f"{type(model).__name__} was not fitted on named columns")
    return [str(c) for c in names]


def score_table(model: Any, frame: pd.DataFrame) -> pd.DataFrame:
    """One row per input row: ``score`` (response probability; if pushed, for uplift models)
    and, for uplift models, ``uplift``; with several arms that is the best arm's, named in
    ``best_arm``, beside ``uplift_<arm>`` per arm."""
    try:
        X = _columns_for(model, frame)
    except KeyError as e:
        raise InvalidInputError("table", f"{e.args[0]}; found {list(frame.columns)}") from e
    out = pd.DataFrame(index=frame.index)
    if hasattr(model, "predict_response"):
        out["score"] = model.predict_response(X)
        out["uplift"] = model.predict(X)
        arms = getattr(model, "arms_", [])
        if len(arms) > 1:
            per_arm = model.predict_arms(X)
            out["best_arm"] = per_arm.idxmax(axis=1).to_numpy()
            for arm in arms:
                out[f"uplift_{arm}"] = per_arm[arm].to_numpy()
    else:
        out["score"] = model.predict_proba(X)[:, 1]
    return out


def _partition_bounds(n_rows: int, partition_rows: int) -> list[tuple[int, int]]:
    return [(start, min(start + partition_rows, n_rows)) for start in range(0, n_rows, partition_rows)]


def score_partitioned(
    model: Any,
    frame: pd.DataFrame,
    score: Callable[[Any, pd.DataFrame], pd.DataFrame] = score_table,
    *,
    partition_rows: int = PARTITION_ROWS,
    progress: bool | None = None,
) -> pd.DataFrame:
    """``score(model, frame)`` fanned out over the running Ray, in row order.

    The model goes into the object store once; each task scores ``partition_rows`` consecutive
    rows and the results are concatenated in the input's order, so the output equals
    ``score(model, frame)`` row for row. ``score`` must be a module-level function, so Ray can
    import it in a worker. The caller starts Ray (``serving.app.start_ray``). ``progress``: a
    tqdm bar on stderr over partitions; None shows it only on a terminal.
    """
    import ray
    from tqdm import tqdm

    if partition_rows < 1:
        raise InvalidInputError("partition_rows", f"must be at least 1, got {partition_rows}")
    if not ray.is_initialized():
        raise RuntimeError("score_partitioned needs a running Ray; start it with serving.app.start_ray")
    if score is score_table:
        # Ship only the columns the model reads, not ids or the label.
        try:
            frame = _columns_for(model, frame)
        except KeyError as e:
            raise InvalidInputError("table", f"{e.args[0]}; found {list(frame.columns)}") from e
    bounds = _partition_bounds(len(frame), partition_rows)
    if not bounds:
        return score(model, frame)
    task = ray.remote(num_cpus=1, max_retries=0)(score)
    model_ref = ray.put(model)
    # A bounded window of tasks, so a huge frame is not copied into the object store at once.
    window = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
    queued = iter(enumerate(bounds))
    pending: dict[Any, int] = {}
    parts: list[pd.DataFrame] = [pd.DataFrame()] * len(bounds)
    with tqdm(total=len(bounds), unit="part", desc="scoring",
              disable=None if progress is None else not progress) as bar:
        while True:
            for i, (start, stop) in itertools.islice(queued, window - len(pending)):
                pending[task.remote(model_ref, frame.iloc[start:stop])] = i
            if not pending:
                break
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                parts[pending.pop(ref)] = ray.get(ref)
                bar.update(1)
    return pd.concat(parts)


def score_proba(model: Any, X: pd.DataFrame) -> pd.DataFrame:
    """``score``: the probability of class 1 per row of ``X``, on ``X``'s index."""
    return pd.DataFrame({"score": model.predict_proba(X)[:, 1]}, index=X.index)
